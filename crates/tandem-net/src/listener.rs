//! Listening sockets bound the way a balancer needs them.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Backlog of every listener: enough to absorb a burst while tandem accepts.
pub const BACKLOG: i32 = 4096;

/// Binds `address` with SO_REUSEADDR and IP_FREEBIND (so a backup node can bind a
/// virtual address it does not hold yet), IPv6 only for an IPv6 address,
/// non-blocking, and listens with [`BACKLOG`]. Call it inside a tokio runtime.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_on_loopback() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(address).await.unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        drop(accepted);
    }

    #[tokio::test]
    async fn sets_reuse_address() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let socket = socket2::SockRef::from(&listener);
        assert!(socket.reuse_address().unwrap());
    }

    /// IP_FREEBIND: an address this host does not hold (TEST-NET-3) can be bound, as
    /// a backup node binds its virtual address. Nothing is sent to it.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn binds_an_address_not_held() {
        let listener = bind("203.0.113.77:0".parse().unwrap()).unwrap();
        assert!(socket2::SockRef::from(&listener).freebind_v4().unwrap());
        let plain = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let refused = plain.bind(&"203.0.113.77:0".parse::<SocketAddr>().unwrap().into());
        assert_eq!(
            refused.unwrap_err().kind(),
            io::ErrorKind::AddrNotAvailable,
            "without IP_FREEBIND the bind fails (unless the host holds the address)"
        );
    }

    #[tokio::test]
    async fn ipv6_listener_is_ipv6_only() {
        let listener = bind("[::1]:0".parse().unwrap()).unwrap();
        assert!(socket2::SockRef::from(&listener).only_v6().unwrap());
    }
}
