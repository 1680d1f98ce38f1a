//! What VRRP needs of rtnetlink, behind a small type so that crate's frequent API
//! changes stay in this file.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::Handle;

/// A netlink connection for one network namespace (the process's).
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

/// What VRRP needs to know of its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Hardware address.
    pub mac: [u8; 6],
    /// Administratively up and with carrier.
    pub running: bool,
}

/// Netlink failures, with the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    what: String,
    source: rtnetlink::Error,
}

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError { what, source }
}

impl Netlink {
    /// Opens a connection (its driver runs on the current tokio runtime).
    pub fn open() -> std::io::Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The interface called `name`.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let link = match links.try_next().await {
            Ok(l) => l,
            // "No such device" comes back as an error: the interface does not exist.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                return Ok(None);
            }
            Err(e) => return Err(failed(format!("looking up interface {name}"))(e)),
        };
        Ok(link.map(|l| {
            let mut mac = [0u8; 6];
            for a in &l.attributes {
                if let LinkAttribute::Address(bytes) = a
                    && bytes.len() == 6
                {
                    mac.copy_from_slice(bytes);
                }
            }
            let flags = l.header.flags;
            LinkInfo {
                index: l.header.index,
                mac,
                running: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
            }
        }))
    }

    /// Addresses (IPv4 and IPv6) on interface `index`, with prefix and whether each is
    /// secondary (IPv4) or not yet usable (IPv6: tentative or failed duplicate address
    /// detection).
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8, bool)>, NetlinkError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(failed("listing addresses"))?
        {
            let flags = msg.header.flags;
            let secondary = flags.contains(AddressHeaderFlags::Secondary)
                || flags.contains(AddressHeaderFlags::Tentative)
                || flags.contains(AddressHeaderFlags::Dadfailed);
            // IPv4 addresses come as IFA_LOCAL, IPv6 ones as IFA_ADDRESS only.
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip @ IpAddr::V6(_)) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip {
                out.push((ip, msg.header.prefix_len, secondary));
            }
        }
        Ok(out)
    }

    /// Adds `ip/prefix` to interface `index`; already present is fine. An IPv6
    /// address skips duplicate address detection (IFA_F_NODAD): a takeover must not
    /// wait for it, and the address is the group's, not this node's.
    pub async fn add_address(
        &self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut request = self.handle.address().add(index, ip, prefix);
        if ip.is_ipv6() {
            request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        match request.execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            other => other.map_err(failed(format!("adding {ip}/{prefix}"))),
        }
    }

    /// Removes `ip` from interface `index`; already absent is fine.
    pub async fn remove_address(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(ip)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(failed(format!("looking up {ip}")))?
        {
            match self.handle.address().del(msg).execute().await {
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
                other => other.map_err(failed(format!("removing {ip}")))?,
            }
        }
        Ok(())
    }
}
