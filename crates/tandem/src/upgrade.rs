//! Upgrade in place: what a running tandem and the new binary it starts say to each
//! other.
//!
//! The running (old) process binds a private unix socket next to its control socket and
//! starts the new binary with that path in [`ENV`]. The new process connects (the old
//! one checks its pid) and receives a [`Header`] with the listening sockets attached
//! (SCM_RIGHTS, the same sockets: both processes can accept from one queue; with
//! `[announce]` also the TUN device, which must outlive the old process), then the
//! sticky tables in the state file's form ([`crate::state_file::encode`]). Once it
//! accepts, it answers [`Outcome::Ready`]; when it cannot start (configuration, a
//! socket, anything), [`Outcome::Failed`] with the reason, and exits. After `Ready` the
//! old process stops accepting, sends the pins it made meanwhile (same form), and
//! drains.
//!
//! The wire: 8 bytes (header length, socket count: u32 big endian) sent with the file
//! descriptors, the header (JSON), then each table as a u64 length and its bytes. The
//! outcome goes back as one JSON line.

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use serde::{Deserialize, Serialize};

/// The environment variable that tells a starting tandem where its predecessor waits.
pub const ENV: &str = "TANDEM_UPGRADE_FROM";

/// Most sockets one handover carries (the kernel's SCM_MAX_FD is 253).
pub const MAX_SOCKETS: usize = 250;

/// Largest header or table accepted (a sticky entry takes about 40 bytes).
const MAX_BLOB: u64 = 1 << 30;

/// A listening socket handed over, in the order of the descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Socket {
    /// A service's listener, by its configured address.
    Service {
        /// The service it was bound for.
        service: String,
        /// The address as configured (port 0 stays 0).
        address: SocketAddr,
    },
    /// The admin port (`global.admin_listen`, as configured).
    Admin {
        /// The configured address.
        address: SocketAddr,
    },
    /// The control socket.
    Control {
        /// `global.control_socket`.
        path: PathBuf,
    },
    /// The sync listener (`sync.listen`).
    Sync {
        /// The configured address.
        address: SocketAddr,
    },
    /// The TUN device BIRD exports (`announce.interface`): not a socket, but it too
    /// must stay open, or the device and the routes go.
    Announce {
        /// The interface name.
        interface: String,
    },
}

/// What the old process sends first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The old process.
    pub pid: u32,
    /// The sockets, one per descriptor, in order.
    pub sockets: Vec<Socket>,
    /// The VRRP state the new process starts in (`MASTER` or `BACKUP`), when `[ha]`
    /// runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp: Option<String>,
    /// Each VRRP router's state, by interface, vrid and family (a successor that
    /// knows only `vrrp` reads that, sent when there is one router).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routers: Vec<RouterState>,
    /// Each checked backend's health, so that the successor neither serves a backend
    /// known down nor demotes a router for a pool known up while its checks start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<BackendState>,
    /// The announcer's state, with `[announce]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceState>,
    /// The redirect plane's state, with redirect services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectState>,
}

/// What the predecessor announced, and why not the rest, so that its successor resumes
/// without withdrawing anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceState {
    /// The readiness gate had opened.
    pub ready: bool,
    /// The operator had withdrawn the node.
    pub operator: bool,
    /// The addresses on the device.
    pub announced: Vec<IpAddr>,
    /// Addresses withdrawn for their pools' health (held for `announce_delay`).
    pub unhealthy: Vec<IpAddr>,
}

/// The kernel's part of redirect services as the predecessor left it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedirectState {
    /// The rules it applied ([`tandem_redirect::rules::fingerprint`]); none: none
    /// applied yet. A successor that wants the same keeps the table as it is.
    pub rules: Option<String>,
    /// It ran conntrackd: the successor starts its own once the predecessor's has
    /// stopped (at the predecessor's retiring).
    pub conntrackd: bool,
}

/// What a handover carries besides the sockets and the sticky tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// Each VRRP router's state.
    pub routers: Vec<RouterState>,
    /// The backends' decided health.
    pub health: Vec<BackendState>,
    /// The announcer's state.
    pub announce: Option<AnnounceState>,
    /// The redirect plane's state.
    pub redirect: Option<RedirectState>,
}

/// One backend's health as its pool's checks last decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendState {
    /// The pool.
    pub pool: String,
    /// The backend's address.
    pub address: SocketAddr,
    /// Up.
    pub up: bool,
}

/// One VRRP router's state, handed over so that its successor resumes in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterState {
    /// The interface it runs on.
    pub interface: String,
    /// Its virtual router id.
    pub vrid: u8,
    /// An IPv6 router (VRRPv3 keeps a vrid per family).
    pub ipv6: bool,
    /// `MASTER` or `BACKUP`.
    pub state: String,
}

/// The new process's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// It accepts on every socket and answers the control socket.
    Ready {
        /// Its pid.
        pid: u32,
    },
    /// It cannot start, and exits.
    Failed {
        /// Why, as it would print it.
        reason: String,
    },
}

/// Sends the header with `sockets`' descriptors attached, then `sticky`.
pub fn send(
    stream: &UnixStream,
    pid: u32,
    carried: Carried,
    sockets: &[(Socket, BorrowedFd<'_>)],
    sticky: &[u8],
) -> io::Result<()> {
    if sockets.len() > MAX_SOCKETS {
        return Err(io::Error::other(format!(
            "{} listening sockets, more than the {MAX_SOCKETS} one handover carries",
            sockets.len()
        )));
    }
    let Carried {
        routers,
        health,
        announce,
        redirect,
    } = carried;
    let header = Header {
        pid,
        sockets: sockets.iter().map(|(s, _)| s.clone()).collect(),
        vrrp: match routers.as_slice() {
            [one] => Some(one.state.clone()),
            _ => None,
        },
        routers,
        health,
        announce,
        redirect,
    };
    let json = serde_json::to_vec(&header).map_err(io::Error::other)?;
    let mut prefix = [0u8; 8];
    prefix[..4].copy_from_slice(&(json.len() as u32).to_be_bytes());
    prefix[4..].copy_from_slice(&(sockets.len() as u32).to_be_bytes());
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("the descriptors do not fit their buffer"));
    }
    let sent = sendmsg(
        stream,
        &[IoSlice::new(&prefix)],
        &mut control,
        SendFlags::empty(),
    )?;
    (&*stream).write_all(&prefix[sent..])?;
    (&*stream).write_all(&json)?;
    send_table(stream, sticky)
}

/// What [`receive`] returns.
#[derive(Debug)]
pub struct Received {
    /// The header.
    pub header: Header,
    /// The descriptors, each with the socket it is.
    pub sockets: Vec<(Socket, OwnedFd)>,
    /// The sticky tables (state file form).
    pub sticky: Vec<u8>,
}

/// Receives what [`send`] sent: the header, the descriptors paired with its sockets,
/// and the sticky table.
pub fn receive(stream: &UnixStream) -> io::Result<Received> {
    let mut prefix = [0u8; 8];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut prefix)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(io::Error::other("the sockets' descriptors were cut off"));
    }
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.bytes == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    (&*stream).read_exact(&mut prefix[got.bytes..])?;
    let json_len = u32::from_be_bytes(prefix[..4].try_into().expect("4 bytes")) as u64;
    let count = u32::from_be_bytes(prefix[4..].try_into().expect("4 bytes")) as usize;
    if count != fds.len() {
        return Err(io::Error::other(format!(
            "{count} sockets announced, {} received",
            fds.len()
        )));
    }
    let header: Header =
        serde_json::from_slice(&read_exact_len(stream, json_len)?).map_err(io::Error::other)?;
    if header.sockets.len() != fds.len() {
        return Err(io::Error::other(format!(
            "{} sockets described, {} received",
            header.sockets.len(),
            fds.len()
        )));
    }
    let sticky = receive_table(stream)?;
    let sockets = header.sockets.iter().cloned().zip(fds).collect();
    Ok(Received {
        header,
        sockets,
        sticky,
    })
}

/// Sends a sticky table (state file form): its length, then its bytes.
pub fn send_table(stream: &UnixStream, table: &[u8]) -> io::Result<()> {
    (&*stream).write_all(&(table.len() as u64).to_be_bytes())?;
    (&*stream).write_all(table)
}

/// Receives a table sent by [`send_table`].
pub fn receive_table(stream: &UnixStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    (&*stream).read_exact(&mut len)?;
    read_exact_len(stream, u64::from_be_bytes(len))
}

fn read_exact_len(stream: &UnixStream, len: u64) -> io::Result<Vec<u8>> {
    if len > MAX_BLOB {
        return Err(io::Error::other(format!(
            "{len} bytes announced, more than {MAX_BLOB}"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    (&*stream).read_exact(&mut buf)?;
    Ok(buf)
}

/// Sends the outcome line.
pub fn send_outcome(stream: &UnixStream, outcome: &Outcome) -> io::Result<()> {
    let mut line = serde_json::to_vec(outcome).map_err(io::Error::other)?;
    line.push(b'\n');
    (&*stream).write_all(&line)
}

/// Reads the outcome line; end of stream before it is an error of kind `UnexpectedEof`.
pub fn receive_outcome(stream: &UnixStream) -> io::Result<Outcome> {
    let mut line = String::new();
    // The new process writes nothing after its outcome: reading ahead loses nothing.
    BufReader::new(stream.as_fd().try_clone_to_owned().map(UnixStream::from)?)
        .take(64 * 1024)
        .read_line(&mut line)?;
    if line.is_empty() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    serde_json::from_str(&line).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_and_tables_arrive_as_sent() {
        let (old, new) = UnixStream::pair().unwrap();
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sockets = vec![
            (
                Socket::Service {
                    service: "imap".into(),
                    address: "127.0.0.1:0".parse().unwrap(),
                },
                l1.as_fd(),
            ),
            (
                Socket::Admin {
                    address: "127.0.0.1:9000".parse().unwrap(),
                },
                l2.as_fd(),
            ),
        ];
        let sticky = vec![7u8; 100_000];
        let routers = vec![
            RouterState {
                interface: "eth0".into(),
                vrid: 51,
                ipv6: false,
                state: "MASTER".into(),
            },
            RouterState {
                interface: "eth0".into(),
                vrid: 52,
                ipv6: false,
                state: "BACKUP".into(),
            },
        ];
        let health = vec![BackendState {
            pool: "web".into(),
            address: "10.0.0.1:80".parse().unwrap(),
            up: true,
        }];
        let announce = AnnounceState {
            ready: true,
            operator: false,
            announced: vec!["192.0.2.10".parse().unwrap()],
            unhealthy: vec!["2001:db8::10".parse().unwrap()],
        };
        let sender = std::thread::scope(|s| {
            let carried = Carried {
                routers: routers.clone(),
                health: health.clone(),
                announce: Some(announce.clone()),
                redirect: Some(RedirectState {
                    rules: Some("rules".into()),
                    conntrackd: true,
                }),
            };
            let h = s.spawn(|| send(&old, 42, carried, &sockets, &sticky));
            let got = receive(&new).unwrap();
            h.join().unwrap().unwrap();
            got
        });
        let Received {
            header,
            sockets: fds,
            sticky: table,
        } = sender;
        assert_eq!(header.pid, 42);
        assert_eq!(header.vrrp, None, "several routers: no single state");
        assert_eq!(header.routers, routers);
        assert_eq!(header.health, health);
        assert_eq!(header.announce, Some(announce));
        assert_eq!(header.redirect.unwrap().rules.as_deref(), Some("rules"));
        assert_eq!(table, sticky);
        assert_eq!(fds.len(), 2);
        assert_eq!(fds[0].0, sockets[0].0);
        // The same socket: a connection to the old listener's address is accepted
        // through the received descriptor.
        let received = std::net::TcpListener::from(fds.into_iter().next().unwrap().1);
        assert_eq!(
            received.local_addr().unwrap(),
            l1.local_addr().unwrap(),
            "the received descriptor is the old listener"
        );
        let client = std::net::TcpStream::connect(l1.local_addr().unwrap()).unwrap();
        let (_, peer) = received.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());

        send_outcome(&new, &Outcome::Ready { pid: 43 }).unwrap();
        assert_eq!(receive_outcome(&old).unwrap(), Outcome::Ready { pid: 43 });
        send_table(&old, b"later").unwrap();
        assert_eq!(receive_table(&new).unwrap(), b"later");
    }

    #[test]
    fn a_peer_gone_before_its_outcome_is_an_end_of_stream() {
        let (old, new) = UnixStream::pair().unwrap();
        drop(new);
        assert_eq!(
            receive_outcome(&old).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn a_failure_carries_its_reason() {
        let (old, new) = UnixStream::pair().unwrap();
        let failed = Outcome::Failed {
            reason: "tandem.toml:3:1: pools: unknown key".into(),
        };
        send_outcome(&new, &failed).unwrap();
        assert_eq!(receive_outcome(&old).unwrap(), failed);
    }
}
