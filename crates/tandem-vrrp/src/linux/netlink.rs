//! What VRRP needs of rtnetlink, behind a small type so that crate's frequent API
//! changes stay in this file.

use std::net::{IpAddr, Ipv4Addr};

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

    /// IPv4 addresses on interface `index`, with prefix and whether each is secondary.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8, bool)>, NetlinkError> {
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
            let secondary = msg.header.flags.contains(AddressHeaderFlags::Secondary);
            for a in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = a {
                    out.push((*ip, msg.header.prefix_len, secondary));
                }
            }
        }
        Ok(out)
    }

    /// Adds `ip/prefix` to interface `index`; already present is fine.
    pub async fn add_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
        {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            other => other.map_err(failed(format!("adding {ip}/{prefix}"))),
        }
    }

    /// Removes `ip` from interface `index`; already absent is fine.
    pub async fn remove_address(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(IpAddr::V4(ip))
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
