//! The raw IP socket for protocol 112 on one interface, IPv4 or IPv6.
//!
//! An IPv4 raw socket delivers whole packets (the IP header with the TTL and both
//! addresses); an IPv6 one delivers the VRRP message only, with the source as the
//! peer's address and the destination and hop limit as ancillary data
//! (IPV6_RECVPKTINFO, IPV6_RECVHOPLIMIT), and sends from the address given in an
//! IPV6_PKTINFO message, the interface's link-local one.
//!
//! Registering the socket with tokio's reactor and setting the options socket2 lacks
//! are `unsafe`; the socket is owned by the `AsyncFd` for its whole life, which
//! upholds the first. The IPv6 control messages are nix's.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, Read};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg, sendmsg,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::packet::{IPPROTO_VRRP, MULTICAST_V4, MULTICAST_V6, TTL};

/// Sends and receives VRRP packets on one interface (needs CAP_NET_RAW).
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    /// IPv6: the link-local source (sent as IPV6_PKTINFO with `ifindex`).
    source: Option<Ipv6Addr>,
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
        let source = match primary {
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
                Some(primary)
            }
        };
        socket.set_nonblocking(true)?;
        // SAFETY: `socket` owns its descriptor and moves into the AsyncFd, which keeps it
        // open and unchanged until it is dropped.
        let fd = unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)?;
        Ok(VrrpSocket {
            fd,
            source,
            ifindex,
        })
    }

    /// Sends a VRRP message (the kernel adds the IP header) to `destination`.
    pub fn send(&self, message: &[u8], destination: IpAddr) -> io::Result<()> {
        match (destination, self.source) {
            (IpAddr::V6(ip), Some(source)) => send_v6(
                self.fd.as_raw_fd(),
                message,
                SocketAddrV6::new(ip, 0, 0, self.ifindex),
                source,
                self.ifindex,
            ),
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
        if self.source.is_none() {
            let len = (&*socket).read(buf)?;
            return Ok(Datagram { len, meta: None });
        }
        let (len, meta) = recv_v6(socket.as_raw_fd(), buf)?;
        Ok(Datagram {
            len,
            meta: Some(meta),
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

/// Sends `message` to `to` from `source` on interface `ifindex` (an IPV6_PKTINFO
/// control message).
fn send_v6(
    fd: std::os::fd::RawFd,
    message: &[u8],
    to: SocketAddrV6,
    source: Ipv6Addr,
    ifindex: u32,
) -> io::Result<()> {
    let info = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: source.octets(),
        },
        ipi6_ifindex: ifindex,
    };
    sendmsg(
        fd,
        &[IoSlice::new(message)],
        &[ControlMessage::Ipv6PacketInfo(&info)],
        MsgFlags::empty(),
        Some(&SockaddrIn6::from(to)),
    )
    .map(drop)
    .map_err(io::Error::from)
}

/// Receives one message into `buf`, with its source, destination (IPV6_PKTINFO) and
/// hop limit (IPV6_HOPLIMIT) when the kernel gives them.
fn recv_v6(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<(usize, Meta6)> {
    let mut control = nix::cmsg_space!(libc::in6_pktinfo, libc::c_int);
    let mut buffers = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn6>(fd, &mut buffers, Some(&mut control), MsgFlags::empty())
        .map_err(io::Error::from)?;
    let mut meta = Meta6 {
        source: msg.address.map_or(Ipv6Addr::UNSPECIFIED, |a| a.ip()),
        destination: Ipv6Addr::UNSPECIFIED,
        hop_limit: 0,
    };
    // Truncated control data (not expected: the buffer holds both) gives neither.
    for c in msg.cmsgs().into_iter().flatten() {
        match c {
            ControlMessageOwned::Ipv6PacketInfo(info) => {
                meta.destination = Ipv6Addr::from(info.ipi6_addr.s6_addr);
            }
            ControlMessageOwned::Ipv6HopLimit(hops) => {
                meta.hop_limit = u8::try_from(hops).unwrap_or(0);
            }
            _ => {}
        }
    }
    Ok((msg.bytes, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over UDP on the loopback interface (no privilege needed): what is sent with
    /// IPV6_PKTINFO arrives from that source, and the receiver reads its destination
    /// and hop limit as a VRRP socket does.
    #[test]
    fn ipv6_control_messages_set_the_source_and_give_destination_and_hop_limit() {
        let lo = std::ffi::CString::new("lo").unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(lo.as_ptr()) };
        assert_ne!(ifindex, 0);
        let receiver = Socket::new(Domain::IPV6, Type::DGRAM, None).unwrap();
        receiver
            .bind(&SocketAddr::from((Ipv6Addr::LOCALHOST, 0)).into())
            .unwrap();
        receiver.set_recv_hoplimit_v6(true).unwrap();
        set_int_option(&receiver, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1).unwrap();
        let to = receiver.local_addr().unwrap().as_socket_ipv6().unwrap();
        let sender = Socket::new(Domain::IPV6, Type::DGRAM, None).unwrap();
        sender.set_unicast_hops_v6(u32::from(TTL)).unwrap();
        send_v6(
            sender.as_raw_fd(),
            b"advert",
            to,
            Ipv6Addr::LOCALHOST,
            ifindex,
        )
        .unwrap();
        let mut buf = [0u8; 64];
        let (len, meta) = recv_v6(receiver.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..len], b"advert");
        assert_eq!(
            meta,
            Meta6 {
                source: Ipv6Addr::LOCALHOST,
                destination: Ipv6Addr::LOCALHOST,
                hop_limit: TTL,
            }
        );
        // Nothing waiting: would block, as the VRRP socket's try_recv expects.
        receiver.set_nonblocking(true).unwrap();
        let e = recv_v6(receiver.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
