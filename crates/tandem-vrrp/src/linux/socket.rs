//! The raw IP socket for protocol 112 on one interface, IPv4 or IPv6.
//!
//! An IPv4 raw socket delivers whole packets (the IP header with the TTL and both
//! addresses); an IPv6 one delivers the VRRP message only, with the source as the
//! peer's address and the destination and hop limit as ancillary data
//! (IPV6_RECVPKTINFO, IPV6_RECVHOPLIMIT), and sends from the address given in an
//! IPV6_PKTINFO message, the interface's link-local one.
//!
//! Registering the socket with tokio's reactor, setting the options socket2 lacks
//! and handing it uninitialised buffers are `unsafe`; the socket is owned by the
//! `AsyncFd` for its whole life, which upholds the first.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, Read};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;

use socket2::{
    Domain, InterfaceIndexOrAddress, MaybeUninitSlice, MsgHdr, MsgHdrMut, Protocol, SockAddr,
    Socket, Type,
};
use tokio::io::unix::AsyncFd;

use crate::packet::{IPPROTO_VRRP, MULTICAST_V4, MULTICAST_V6, TTL};

/// Sends and receives VRRP packets on one interface (needs CAP_NET_RAW).
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    /// IPv6: the link-local source and the interface index, as IPV6_PKTINFO.
    pktinfo: Option<Vec<u8>>,
    /// The interface (scope of link-local destinations).
    ifindex: u32,
}

/// What the kernel says of a received IPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta6 {
    /// The sender.
    pub source: Ipv6Addr,
    /// Where it was sent (IPV6_PKTINFO); unspecified when the kernel gave none.
    pub destination: Ipv6Addr,
    /// Its hop limit on arrival (IPV6_HOPLIMIT); 0 when the kernel gave none.
    pub hop_limit: u8,
}

/// A received datagram: `len` bytes in the buffer; for IPv6 what the kernel says of it
/// (for IPv4 the buffer holds the IP header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Bytes received.
    pub len: usize,
    /// IPv6 only.
    pub meta: Option<Meta6>,
}

impl VrrpSocket {
    /// Opens the socket on interface `name` (index `ifindex`), sending from `primary`:
    /// bound to the device, TTL or hop limit 255, multicast loop off, member of
    /// 224.0.0.18 or ff02::12 by `primary`'s family.
    pub fn open(name: &str, ifindex: u32, primary: IpAddr) -> io::Result<VrrpSocket> {
        let domain = if primary.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(
            domain,
            Type::RAW,
            Some(Protocol::from(i32::from(IPPROTO_VRRP))),
        )?;
        socket.bind_device(Some(name.as_bytes()))?;
        let index =
            NonZeroU32::new(ifindex).ok_or_else(|| io::Error::other("interface index 0"))?;
        let pktinfo = match primary {
            IpAddr::V4(primary) => {
                socket.set_multicast_if_v4(&primary)?;
                socket.set_multicast_ttl_v4(u32::from(TTL))?;
                socket.set_ttl_v4(u32::from(TTL))?;
                socket.set_multicast_loop_v4(false)?;
                socket.join_multicast_v4_n(
                    &MULTICAST_V4,
                    &InterfaceIndexOrAddress::Index(index.get()),
                )?;
                None
            }
            IpAddr::V6(primary) => {
                socket.set_multicast_if_v6(index.get())?;
                socket.set_multicast_hops_v6(u32::from(TTL))?;
                socket.set_unicast_hops_v6(u32::from(TTL))?;
                socket.set_multicast_loop_v6(false)?;
                socket.join_multicast_v6(&MULTICAST_V6, index.get())?;
                socket.set_recv_hoplimit_v6(true)?;
                set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
                Some(pktinfo_message(primary, index.get()))
            }
        };
        socket.set_nonblocking(true)?;
        // SAFETY: `socket` owns its descriptor and moves into the AsyncFd, which keeps it
        // open and unchanged until it is dropped.
        let fd = unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)?;
        Ok(VrrpSocket {
            fd,
            pktinfo,
            ifindex,
        })
    }

    /// Sends a VRRP message (the kernel adds the IP header) to `destination`.
    pub fn send(&self, message: &[u8], destination: IpAddr) -> io::Result<()> {
        match (destination, &self.pktinfo) {
            (IpAddr::V6(ip), Some(pktinfo)) => {
                let to = SockAddr::from(SocketAddrV6::new(ip, 0, 0, self.ifindex));
                let buffers = [IoSlice::new(message)];
                let msg = MsgHdr::new()
                    .with_addr(&to)
                    .with_buffers(&buffers)
                    .with_control(pktinfo);
                self.fd.get_ref().sendmsg(&msg, 0).map(drop)
            }
            (IpAddr::V4(ip), None) => {
                let to = SocketAddr::V4(SocketAddrV4::new(ip, 0));
                self.fd.get_ref().send_to(message, &to.into()).map(drop)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "destination of the other address family",
            )),
        }
    }

    /// Receives one datagram into `buf` if one is waiting, without waiting.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
        match self.receive(buf) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Receives one datagram into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Datagram> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|_| self.receive(buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    fn receive(&self, buf: &mut [u8]) -> io::Result<Datagram> {
        let socket = self.fd.get_ref();
        if self.pktinfo.is_none() {
            let len = (&*socket).read(buf)?;
            return Ok(Datagram { len, meta: None });
        }
        let mut from = SockAddr::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
        let mut control = [MaybeUninit::<u8>::uninit(); 128];
        // SAFETY: a `[u8]` is a valid `[MaybeUninit<u8>]` of the same length; recvmsg
        // only writes initialised bytes into it.
        let data = unsafe {
            std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<MaybeUninit<u8>>(), buf.len())
        };
        let mut buffers = [MaybeUninitSlice::new(data)];
        let mut msg = MsgHdrMut::new()
            .with_addr(&mut from)
            .with_buffers(&mut buffers)
            .with_control(&mut control);
        let len = socket.recvmsg(&mut msg, 0)?;
        let control_len = msg.control_len().min(control.len());
        // SAFETY: the kernel wrote the first `control_len` bytes.
        let control: &[u8] =
            unsafe { std::slice::from_raw_parts(control.as_ptr().cast::<u8>(), control_len) };
        let (destination, hop_limit) = parse_control(control);
        let source = from
            .as_socket_ipv6()
            .map(|a| *a.ip())
            .unwrap_or(Ipv6Addr::UNSPECIFIED);
        Ok(Datagram {
            len,
            meta: Some(Meta6 {
                source,
                destination: destination.unwrap_or(Ipv6Addr::UNSPECIFIED),
                hop_limit: hop_limit.unwrap_or(0),
            }),
        })
    }
}

fn set_int_option(socket: &Socket, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option takes an int, passed by pointer with its size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The size of a `cmsghdr`, rounded up as CMSG_ALIGN does.
const CMSG_HEADER: usize = cmsg_align(std::mem::size_of::<libc::cmsghdr>());

const fn cmsg_align(n: usize) -> usize {
    let a = std::mem::size_of::<usize>();
    n.div_ceil(a) * a
}

/// An IPV6_PKTINFO control message: send from `source` on interface `ifindex`.
fn pktinfo_message(source: Ipv6Addr, ifindex: u32) -> Vec<u8> {
    let data_len = 16 + 4; // struct in6_pktinfo
    let mut b = vec![0u8; cmsg_align(CMSG_HEADER + data_len)];
    b[..std::mem::size_of::<usize>()].copy_from_slice(&(CMSG_HEADER + data_len).to_ne_bytes());
    let level = std::mem::size_of::<usize>();
    b[level..level + 4].copy_from_slice(&libc::IPPROTO_IPV6.to_ne_bytes());
    b[level + 4..level + 8].copy_from_slice(&libc::IPV6_PKTINFO.to_ne_bytes());
    b[CMSG_HEADER..CMSG_HEADER + 16].copy_from_slice(&source.octets());
    b[CMSG_HEADER + 16..CMSG_HEADER + 20].copy_from_slice(&ifindex.to_ne_bytes());
    b
}

/// The destination (IPV6_PKTINFO) and hop limit (IPV6_HOPLIMIT) in received control
/// messages.
fn parse_control(mut control: &[u8]) -> (Option<Ipv6Addr>, Option<u8>) {
    let word = std::mem::size_of::<usize>();
    let (mut destination, mut hop_limit) = (None, None);
    while control.len() >= CMSG_HEADER {
        let len = usize::from_ne_bytes(control[..word].try_into().unwrap_or_default());
        let level = i32::from_ne_bytes(control[word..word + 4].try_into().unwrap_or_default());
        let kind = i32::from_ne_bytes(control[word + 4..word + 8].try_into().unwrap_or_default());
        if len < CMSG_HEADER || len > control.len() {
            break;
        }
        let data = &control[CMSG_HEADER..len];
        match (level, kind) {
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if data.len() >= 16 => {
                let octets: [u8; 16] = data[..16].try_into().unwrap_or_default();
                destination = Some(Ipv6Addr::from(octets));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) if data.len() >= 4 => {
                let hops = i32::from_ne_bytes(data[..4].try_into().unwrap_or_default());
                hop_limit = u8::try_from(hops).ok();
            }
            _ => {}
        }
        control = &control[cmsg_align(len).min(control.len())..];
    }
    (destination, hop_limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; cmsg_align(CMSG_HEADER + data.len())];
        let w = std::mem::size_of::<usize>();
        b[..w].copy_from_slice(&(CMSG_HEADER + data.len()).to_ne_bytes());
        b[w..w + 4].copy_from_slice(&level.to_ne_bytes());
        b[w + 4..w + 8].copy_from_slice(&kind.to_ne_bytes());
        b[CMSG_HEADER..CMSG_HEADER + data.len()].copy_from_slice(data);
        b
    }

    #[test]
    fn control_messages_give_destination_and_hop_limit() {
        let mut pktinfo = MULTICAST_V6.octets().to_vec();
        pktinfo.extend_from_slice(&3u32.to_ne_bytes());
        let mut control = cmsg(
            libc::IPPROTO_IPV6,
            libc::IPV6_HOPLIMIT,
            &254i32.to_ne_bytes(),
        );
        control.extend(cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &pktinfo));
        assert_eq!(parse_control(&control), (Some(MULTICAST_V6), Some(254)));
        assert_eq!(parse_control(&control[..10]), (None, None));
        assert_eq!(parse_control(&[]), (None, None));
        // What is sent is what would be read.
        let sent = pktinfo_message("fe80::1".parse().unwrap(), 3);
        assert_eq!(
            sent,
            cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &{
                let mut d = "fe80::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
                d.extend_from_slice(&3u32.to_ne_bytes());
                d
            })
        );
    }
}
