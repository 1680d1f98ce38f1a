//! Gratuitous ARP: tells the segment which MAC address now answers for an address.
//!
//! The frame goes out through an AF_PACKET socket; building its link-layer address is
//! the one place in this crate that needs `unsafe` (socket2 has no safe constructor for
//! `sockaddr_ll`).
#![allow(unsafe_code)]

use std::io;
use std::net::Ipv4Addr;

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// An ARP request for `ip` from `ip` itself, broadcast: the form Linux and most
/// switches take as an update of their tables.
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 60] {
    let mut f = [0u8; 60]; // minimum Ethernet frame, zero padded
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// A socket that sends raw Ethernet frames on interface `ifindex`: gratuitous ARP, or
/// (opened with [`ArpSender::open_for`]) IPv6 neighbour advertisements.
#[derive(Debug)]
pub struct ArpSender {
    socket: Socket,
    to: SockAddr,
}

impl ArpSender {
    /// Opens the socket (needs CAP_NET_RAW).
    pub fn open(ifindex: u32) -> io::Result<ArpSender> {
        ArpSender::open_with(ifindex, ETH_P_ARP, ETH_P_ARP)
    }

    /// Opens a socket that sends frames of Ethernet type `ethertype` and receives none.
    pub fn open_for(ifindex: u32, ethertype: u16) -> io::Result<ArpSender> {
        ArpSender::open_with(ifindex, ethertype, 0)
    }

    fn open_with(ifindex: u32, ethertype: u16, receive: u16) -> io::Result<ArpSender> {
        let socket = Socket::new(
            Domain::PACKET,
            Type::RAW,
            Some(Protocol::from(i32::from(receive.to_be()))),
        )?;
        let mut storage = SockAddrStorage::zeroed();
        // SAFETY: sockaddr_ll is a sockaddr type of this platform and fits in the storage
        // (view_as asserts the size); every field is plain data written below.
        let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = ethertype.to_be();
        ll.sll_ifindex = ifindex as i32;
        ll.sll_halen = 6;
        ll.sll_addr[..6].copy_from_slice(&BROADCAST);
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the storage holds an initialised sockaddr_ll of `len` bytes.
        let to = unsafe { SockAddr::new(storage, len) };
        Ok(ArpSender { socket, to })
    }

    /// Sends one gratuitous ARP for `ip`.
    pub fn announce(&self, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
        self.send_frame(&frame(mac, ip))
    }

    /// Sends a frame made beforehand with [`frame`] (one system call, nothing else).
    pub fn send_frame(&self, frame: &[u8]) -> io::Result<()> {
        self.socket.send_to(frame, &self.to).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_a_broadcast_arp_request_for_the_address_itself() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let f = frame(mac, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[192, 0, 2, 10]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[192, 0, 2, 10]);
    }
}
