//! Listening sockets bound the way a balancer needs them.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Backlog of every listener: enough to absorb a burst while tandem accepts.
const BACKLOG: i32 = 4096;

/// Binds `address` with SO_REUSEADDR and IP_FREEBIND (so a backup node can bind a
/// virtual address it does not hold yet), non-blocking, and listens.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        if address.is_ipv6() {
            socket.set_only_v6(true)?;
            socket.set_freebind_v6(true)?;
        } else {
            socket.set_freebind_v4(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}
