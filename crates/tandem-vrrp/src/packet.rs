//! VRRPv3 advertisements for IPv4 and IPv6 (RFC 5798 section 5): encode, decode,
//! checksum. An advertisement's addresses are all of one family, the family of the
//! packet that carries it (4 bytes each in IPv4, 16 in IPv6).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! |                       IPvX Address(es)                        |
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The IPv4 multicast group of VRRP.
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group of VRRP (ff02::12).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// The only TTL (IPv4) or hop limit (IPv6) a VRRP packet may arrive with.
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
    /// The virtual addresses, all of the packet's family.
    pub addresses: Vec<IpAddr>,
}

/// Why a received packet was dropped (RFC 5798 section 7.1), one variant per check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum DropReason {
    /// Shorter than its headers.
    #[error("packet too short")]
    TooShort,
    /// Not IPv4 with protocol 112 (or source and destination of different families).
    #[error("not an IPv4 VRRP packet")]
    NotVrrp,
    /// IPv4 TTL or IPv6 hop limit is not 255 (it crossed a router).
    #[error("IP TTL or hop limit is not 255")]
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

/// A received packet: the fields of its IP header that VRRP checks, and the
/// advertisement it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// IP source.
    pub source: IpAddr,
    /// IP destination.
    pub destination: IpAddr,
    /// The advertisement.
    pub advertisement: Advertisement,
}

impl Advertisement {
    /// The VRRP message (no IP header), with its checksum for `source` -> `destination`.
    /// For IPv4, `pseudo_header` says whether the checksum covers the IPv4 pseudo-header
    /// (as RFC 5798 and keepalived do) or only the VRRP message (as some others do); an
    /// IPv6 checksum always covers the IPv6 pseudo-header. Addresses of the other family
    /// than `source` are left out (the settings never mix families).
    pub fn encode(
        &self,
        source: impl Into<IpAddr>,
        destination: impl Into<IpAddr>,
        pseudo_header: bool,
    ) -> Vec<u8> {
        let (source, destination) = (source.into(), destination.into());
        let addresses: Vec<&IpAddr> = self
            .addresses
            .iter()
            .filter(|a| a.is_ipv4() == source.is_ipv4())
            .take(255)
            .collect();
        debug_assert_eq!(addresses.len(), self.addresses.len(), "mixed families");
        let mut b = Vec::with_capacity(HEADER_LEN + address_len(source) * addresses.len());
        b.push((VERSION << 4) | TYPE_ADVERTISEMENT);
        b.push(self.vrid);
        b.push(self.priority);
        b.push(addresses.len() as u8);
        b.extend_from_slice(&(self.interval.get() & 0x0fff).to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        for a in addresses {
            match a {
                IpAddr::V4(a) => b.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => b.extend_from_slice(&a.octets()),
            }
        }
        let sum = checksum(&b, pseudo(source, destination, pseudo_header));
        b[6..8].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Decodes a VRRP message (no IP header) sent from `source` to `destination`; the
    /// family of `source` says how long an address is. `pseudo_header` as for
    /// [`Advertisement::encode`].
    pub fn decode(
        message: &[u8],
        source: impl Into<IpAddr>,
        destination: impl Into<IpAddr>,
        pseudo_header: bool,
    ) -> Result<Advertisement, DropReason> {
        let (source, destination) = (source.into(), destination.into());
        if source.is_ipv4() != destination.is_ipv4() {
            return Err(DropReason::NotVrrp);
        }
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
        let width = address_len(source);
        if message.len() != HEADER_LEN + width * count {
            return Err(DropReason::Length);
        }
        if checksum(message, pseudo(source, destination, pseudo_header)) != 0 {
            return Err(DropReason::Checksum);
        }
        let interval = u16::from_be_bytes([message[4], message[5]]) & 0x0fff;
        let interval = Centis::new(interval).ok_or(DropReason::Interval)?;
        let addresses = message[HEADER_LEN..]
            .chunks_exact(width)
            .map(|c| {
                let mut octets = [0u8; 16];
                octets[..width].copy_from_slice(c);
                if width == 4 {
                    IpAddr::from([c[0], c[1], c[2], c[3]])
                } else {
                    IpAddr::from(octets)
                }
            })
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
    let source = IpAddr::from([packet[12], packet[13], packet[14], packet[15]]);
    let destination = IpAddr::from([packet[16], packet[17], packet[18], packet[19]]);
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

/// Parses an IPv6 VRRP message as a raw IPv6 socket delivers it (no IP header: the
/// kernel gives the source, and the destination and hop limit as ancillary data).
pub fn decode_ipv6(
    message: &[u8],
    source: Ipv6Addr,
    destination: Ipv6Addr,
    hop_limit: u8,
) -> Result<Received, DropReason> {
    if hop_limit != TTL {
        return Err(DropReason::Ttl);
    }
    let advertisement = Advertisement::decode(message, source, destination, true)?;
    Ok(Received {
        source: source.into(),
        destination: destination.into(),
        advertisement,
    })
}

/// Bytes of one address of `ip`'s family.
fn address_len(ip: IpAddr) -> usize {
    if ip.is_ipv4() { 4 } else { 16 }
}

/// The pseudo-header to checksum: IPv6 always has one, IPv4 when asked.
fn pseudo(source: IpAddr, destination: IpAddr, pseudo_header: bool) -> Option<(IpAddr, IpAddr)> {
    (pseudo_header || source.is_ipv6()).then_some((source, destination))
}

/// Internet checksum (RFC 1071) of `data`, preceded by the pseudo-header of a VRRP
/// packet from `.0` to `.1` when given (IPv4's of RFC 768, IPv6's of RFC 8200 section
/// 8.1). Over data whose checksum field holds the right value, the result is 0.
pub fn checksum(data: &[u8], pseudo: Option<(IpAddr, IpAddr)>) -> u16 {
    upper_layer_checksum(data, pseudo, IPPROTO_VRRP)
}

/// [`checksum`] for any upper-layer protocol `next_header` (ICMPv6 is 58).
pub(crate) fn upper_layer_checksum(
    data: &[u8],
    pseudo: Option<(IpAddr, IpAddr)>,
    next_header: u8,
) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    match pseudo {
        Some((IpAddr::V4(src), IpAddr::V4(dst))) => {
            add(&src.octets());
            add(&dst.octets());
            add(&[0, next_header]);
            add(&(data.len() as u16).to_be_bytes());
        }
        Some((src, dst)) => {
            add(&v6(src).octets());
            add(&v6(dst).octets());
            add(&(data.len() as u32).to_be_bytes());
            add(&[0, 0, 0, next_header]);
        }
        None => {}
    }
    add(data);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    }
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
            addresses: vec![Ipv4Addr::new(192, 168, 1, 10).into()],
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

    const LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

    fn advert_v6() -> Advertisement {
        Advertisement {
            vrid: 51,
            priority: 100,
            interval: Centis::new(100).unwrap(),
            addresses: vec!["fe80::10".parse().unwrap(), "2001:db8::10".parse().unwrap()],
        }
    }

    /// Bytes worked out by hand from RFC 5798 section 5, RFC 8200 section 8.1 and RFC 1071.
    #[test]
    fn encodes_known_ipv6_bytes_with_the_ipv6_pseudo_header() {
        // The IPv4 flag does not matter: IPv6 always checksums the pseudo-header.
        for flag in [true, false] {
            let b = advert_v6().encode(LL, MULTICAST_V6, flag);
            assert_eq!(b.len(), 8 + 2 * 16);
            assert_eq!(&b[..6], &[0x31, 51, 100, 2, 0x00, 0x64]);
            assert_eq!(&b[8..10], &[0xfe, 0x80]);
            assert_eq!(&b[22..24], &[0x00, 0x10]);
            assert_eq!(&b[24..28], &[0x20, 0x01, 0x0d, 0xb8]);
            // Pseudo-header fe80 0001 (source), ff02 0012 (destination), 0000 0028
            // (length 40), 0000 0070 (next header 112): 0x1_fe2d. Message 3133 6402 0064
            // 0000, fe80 0010, 2001 0db8 0010: 0x1_c1f2. 0x3_c01f folds to 0xc022, !0xc022.
            assert_eq!(u16::from_be_bytes([b[6], b[7]]), 0x3fdd);
            assert_eq!(
                Advertisement::decode(&b, LL, MULTICAST_V6, flag),
                Ok(advert_v6())
            );
        }
    }

    #[test]
    fn each_ipv6_receive_check_has_its_reason() {
        let good = advert_v6().encode(LL, MULTICAST_V6, true);
        let rx = decode_ipv6(&good, LL, MULTICAST_V6, 255).unwrap();
        assert_eq!(rx.source, IpAddr::V6(LL));
        assert_eq!(rx.advertisement, advert_v6());
        assert_eq!(
            decode_ipv6(&good, LL, MULTICAST_V6, 254),
            Err(DropReason::Ttl)
        );
        assert_eq!(
            decode_ipv6(&good[..7], LL, MULTICAST_V6, 255),
            Err(DropReason::TooShort)
        );
        // An address cut short, or counted as IPv4 addresses.
        assert_eq!(
            decode_ipv6(&good[..30], LL, MULTICAST_V6, 255),
            Err(DropReason::Length)
        );
        let mut v2 = good.clone();
        v2[0] = 0x21;
        assert_eq!(
            decode_ipv6(&v2, LL, MULTICAST_V6, 255),
            Err(DropReason::Version)
        );
        let mut sum = good.clone();
        sum[7] ^= 1;
        assert_eq!(
            decode_ipv6(&sum, LL, MULTICAST_V6, 255),
            Err(DropReason::Checksum)
        );
        // The checksum covers the source: another sender's bytes do not pass as ours.
        let other: Ipv6Addr = "fe80::2".parse().unwrap();
        assert_eq!(
            decode_ipv6(&good, other, MULTICAST_V6, 255),
            Err(DropReason::Checksum)
        );
        assert_eq!(
            Advertisement::decode(&good, LL, MULTICAST_V4, true),
            Err(DropReason::NotVrrp)
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

    const LL_ANY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7);

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
                addresses: addresses.into_iter().map(|a| Ipv4Addr::from(a).into()).collect(),
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
                addresses: vec![Ipv4Addr::new(10, 0, 0, 1).into()],
            };
            let src = Ipv4Addr::new(10, 0, 0, 2);
            let mut bytes = a.encode(src, MULTICAST_V4, pseudo);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Advertisement::decode(&bytes, src, MULTICAST_V4, pseudo).is_err());
        }

        #[test]
        fn ipv6_encode_then_decode_is_identity(
            vrid in 1u8..=255,
            priority in any::<u8>(),
            interval in 1u16..=4095,
            addresses in prop::collection::vec(any::<u128>(), 0..20),
            src in any::<u128>(),
        ) {
            let a = Advertisement {
                vrid,
                priority,
                interval: Centis::new(interval).unwrap(),
                addresses: addresses.into_iter().map(|a| Ipv6Addr::from(a).into()).collect(),
            };
            let src = Ipv6Addr::from(src);
            let bytes = a.encode(src, MULTICAST_V6, false);
            prop_assert_eq!(decode_ipv6(&bytes, src, MULTICAST_V6, 255).map(|r| r.advertisement), Ok(a));
        }

        #[test]
        fn arbitrary_ipv6_messages_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), hops in any::<u8>()) {
            let _ = decode_ipv6(&bytes, LL_ANY, MULTICAST_V6, hops);
        }

        #[test]
        fn arbitrary_packets_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), pseudo in any::<bool>()) {
            let _ = decode_ipv4(&bytes, pseudo);
        }
    }
}
