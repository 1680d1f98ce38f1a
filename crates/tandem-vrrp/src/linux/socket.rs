//! The raw IP socket for protocol 112 on one interface.
//!
//! Registering the socket with tokio's reactor is `unsafe` (the reactor relies on the
//! descriptor staying the same); the socket is owned by the `AsyncFd` for its whole
//! life, which upholds that.
#![allow(unsafe_code)]

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::packet::{IPPROTO_VRRP, MULTICAST_V4, TTL};

/// Sends and receives VRRP packets on one interface (needs CAP_NET_RAW).
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
}

impl VrrpSocket {
    /// Opens the socket on interface `name` (index `ifindex`), sending from `primary`:
    /// bound to the device, TTL 255, multicast loop off, member of 224.0.0.18.
    pub fn open(name: &str, ifindex: u32, primary: Ipv4Addr) -> io::Result<VrrpSocket> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(IPPROTO_VRRP))),
        )?;
        socket.bind_device(Some(name.as_bytes()))?;
        socket.set_multicast_if_v4(&primary)?;
        socket.set_multicast_ttl_v4(u32::from(TTL))?;
        socket.set_ttl_v4(u32::from(TTL))?;
        socket.set_multicast_loop_v4(false)?;
        let index =
            NonZeroU32::new(ifindex).ok_or_else(|| io::Error::other("interface index 0"))?;
        socket.join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(index.get()))?;
        socket.set_nonblocking(true)?;
        // SAFETY: `socket` owns its descriptor and moves into the AsyncFd, which keeps it
        // open and unchanged until it is dropped.
        let fd = unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)?;
        Ok(VrrpSocket { fd })
    }

    /// Sends a VRRP message (the kernel adds the IP header) to `destination`.
    pub fn send(&self, message: &[u8], destination: Ipv4Addr) -> io::Result<()> {
        let to = SocketAddr::V4(SocketAddrV4::new(destination, 0));
        self.fd.get_ref().send_to(message, &to.into()).map(drop)
    }

    /// Receives one whole IPv4 packet into `buf` if one is waiting, without waiting.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.fd.get_ref().read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Receives one whole IPv4 packet into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| fd.get_ref().read(buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}
