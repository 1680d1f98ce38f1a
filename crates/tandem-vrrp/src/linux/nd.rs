//! Unsolicited neighbour advertisements (RFC 4861 section 7.2.6): IPv6's counterpart
//! of gratuitous ARP. The frame is built whole (Ethernet, IPv6, ICMPv6) and sent
//! through the same kind of AF_PACKET socket as ARP, so it leaves at once, from the
//! address it announces, whatever the state of the routing table.

use std::net::{IpAddr, Ipv6Addr};

use crate::packet::{TTL, upper_layer_checksum};

/// Ethernet type of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// The all-nodes multicast group, where unsolicited advertisements go.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ICMPV6: u8 = 58;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Override flag: replace the link-layer address a neighbour holds.
const FLAG_OVERRIDE: u8 = 0x20;
/// Option: target link-layer address, length 1 (8 bytes).
const OPTION_TARGET_LLADDR: [u8; 2] = [2, 1];
/// Bytes of the whole frame: Ethernet 14, IPv6 40, ICMPv6 24 + option 8.
pub const FRAME_LEN: usize = 86;

/// An unsolicited neighbour advertisement for `target` at `mac`: to ff02::1 (Ethernet
/// 33:33:00:00:00:01) from `target` itself (as Linux sends its own), hop limit 255,
/// override set, solicited and router flags clear, with the target link-layer address
/// option. Neighbours that hold an entry for `target` point it at `mac`.
pub fn frame(mac: [u8; 6], target: Ipv6Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    let dst = ALL_NODES.octets();
    f[0..6].copy_from_slice(&[0x33, 0x33, dst[12], dst[13], dst[14], dst[15]]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let ip = &mut f[14..54];
    ip[0] = 0x60; // version 6, traffic class and flow label 0
    ip[4..6].copy_from_slice(&32u16.to_be_bytes()); // payload length
    ip[6] = ICMPV6;
    ip[7] = TTL;
    ip[8..24].copy_from_slice(&target.octets());
    ip[24..40].copy_from_slice(&dst);
    let icmp = &mut f[54..86];
    icmp[0] = NEIGHBOR_ADVERTISEMENT;
    icmp[4] = FLAG_OVERRIDE;
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24..26].copy_from_slice(&OPTION_TARGET_LLADDR);
    icmp[26..32].copy_from_slice(&mac);
    let sum = upper_layer_checksum(
        icmp,
        Some((IpAddr::V6(target), IpAddr::V6(ALL_NODES))),
        ICMPV6,
    );
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_an_unsolicited_override_advertisement_to_all_nodes() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let target: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let f = frame(mac, target);
        assert_eq!(
            &f[0..14],
            &[0x33, 0x33, 0, 0, 0, 1, 2, 0, 0, 0, 0, 1, 0x86, 0xdd]
        );
        // IPv6: version 6, payload 32, next header 58, hop limit 255.
        assert_eq!(&f[14..22], &[0x60, 0, 0, 0, 0, 32, 58, 255]);
        assert_eq!(&f[22..38], &target.octets());
        assert_eq!(&f[38..54], &ALL_NODES.octets());
        // ICMPv6 type 136 code 0, flags O only, the target, option 2 length 1 with the MAC.
        assert_eq!(&f[54..56], &[136, 0]);
        assert_eq!(&f[58..62], &[0x20, 0, 0, 0]);
        assert_eq!(&f[62..78], &target.octets());
        assert_eq!(&f[78..86], &[2, 1, 2, 0, 0, 0, 0, 1]);
        // Pseudo-header: 2001 0db8 0010 (source), ff02 0001 (destination), 0020, 003a:
        // 0x1_2d26. ICMPv6 (checksum 0 while summed): 8800 2000 2001 0db8 0010 0201 0200
        // 0001: 0xd9cb. Total 0x2_06f1 folds to 0x06f3; !0x06f3 = 0xf90c.
        assert_eq!(u16::from_be_bytes([f[56], f[57]]), 0xf90c);
    }
}
