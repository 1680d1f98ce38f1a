//! The interface the node's BGP speaker exports: a non-persistent TUN device that
//! tandem creates and holds open, and the announced addresses on it.
//!
//! The kernel destroys a non-persistent TUN device when the last descriptor of it
//! closes: when tandem exits, or is killed, the device and its addresses vanish at
//! once, and BIRD (`protocol direct { interface "tdm-ann*"; }`) hears the change over
//! netlink and withdraws the routes within milliseconds. An upgrade in place passes a
//! copy of the descriptor to the new tandem ([`AnnounceDevice::adopt`]): the device
//! then lives on with it. The descriptor is opened
//! close-on-exec, so no child process (a check script, a notify hook) keeps it alive.
//! No packet is ever routed out of the device: its addresses are local (/32, /128).

#![allow(unsafe_code)] // One ioctl (TUNSETIFF), commented below.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::{Handle, LinkUnspec};

/// Why the device cannot be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// /dev/net/tun cannot be opened or the device made.
    #[error("creating interface {name}: {source}")]
    Create {
        /// The interface name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was asked.
        what: String,
        /// Why it failed.
        source: rtnetlink::Error,
    },
}

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> DeviceError {
    let what = what.into();
    move |source| DeviceError::Netlink { what, source }
}

/// The announcement interface. Dropping it destroys the device.
#[derive(Debug)]
pub struct AnnounceDevice {
    _tun: File,
    name: String,
    index: u32,
    handle: Handle,
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (a short) at the
/// start of the 24-byte union.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

impl AnnounceDevice {
    /// Creates the TUN device `name` (it must not exist), sets it up, and opens a
    /// netlink connection on the current tokio runtime.
    pub async fn create(name: &str) -> Result<AnnounceDevice, DeviceError> {
        let tun = tun_device(name).map_err(|source| DeviceError::Create {
            name: name.to_string(),
            source,
        })?;
        AnnounceDevice::attach(tun, name).await
    }

    /// Takes over the device `name` of which `tun` is a descriptor (handed over by the
    /// process that made it, at an upgrade): its addresses stay as they are.
    pub async fn adopt(tun: OwnedFd, name: &str) -> Result<AnnounceDevice, DeviceError> {
        AnnounceDevice::attach(File::from(tun), name).await
    }

    /// A copy of the device's descriptor: the device lives while any copy is open.
    pub fn descriptor(&self) -> std::io::Result<OwnedFd> {
        self._tun.as_fd().try_clone_to_owned()
    }

    /// Opens a netlink connection on the current tokio runtime, finds the device and
    /// sets it up.
    async fn attach(tun: File, name: &str) -> Result<AnnounceDevice, DeviceError> {
        let create_error = |source| DeviceError::Create {
            name: name.to_string(),
            source,
        };
        let (connection, handle, _) = rtnetlink::new_connection().map_err(create_error)?;
        tokio::spawn(connection);
        let mut links = handle.link().get().match_name(name.to_string()).execute();
        let index = links
            .try_next()
            .await
            .map_err(failed(format!("looking up interface {name}")))?
            .map(|l| l.header.index)
            .ok_or_else(|| {
                create_error(std::io::Error::other(
                    "the kernel made the device but does not list it",
                ))
            })?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(failed(format!("setting {name} up")))?;
        Ok(AnnounceDevice {
            _tun: tun,
            name: name.to_string(),
            index,
            handle,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The addresses on the device now.
    pub async fn addresses(&self) -> Result<Vec<IpAddr>, DeviceError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(failed(format!("listing the addresses of {}", self.name)))?
        {
            for a in &msg.attributes {
                match a {
                    AddressAttribute::Local(ip) => out.push(*ip),
                    // IPv6 has no IFA_LOCAL without a peer.
                    AddressAttribute::Address(ip @ IpAddr::V6(_)) => out.push(*ip),
                    _ => {}
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Makes the device hold exactly `wanted` (each as /32 or /128): adds what is
    /// missing, removes the rest. Every change is tried; the first failure is returned.
    pub async fn hold(&self, wanted: &[IpAddr]) -> Result<(), DeviceError> {
        let present = self.addresses().await?;
        let mut result = Ok(());
        for ip in present.iter().filter(|ip| !wanted.contains(ip)) {
            if let Err(e) = self.remove(*ip).await {
                result = result.and(Err(e));
            }
        }
        for ip in wanted.iter().filter(|ip| !present.contains(ip)) {
            if let Err(e) = self.add(*ip).await {
                result = result.and(Err(e));
            }
        }
        result
    }

    async fn add(&self, ip: IpAddr) -> Result<(), DeviceError> {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let mut request = self.handle.address().add(self.index, ip, prefix);
        // No duplicate address detection: a tentative address is not exported.
        request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        match request.execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            other => other.map_err(failed(format!("adding {ip}/{prefix} to {}", self.name))),
        }
    }

    async fn remove(&self, ip: IpAddr) -> Result<(), DeviceError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(ip)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(failed(format!("looking up {ip} on {}", self.name)))?
        {
            match self.handle.address().del(msg).execute().await {
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
                other => other.map_err(failed(format!("removing {ip} from {}", self.name)))?,
            }
        }
        Ok(())
    }
}

/// Opens /dev/net/tun (close-on-exec, as std opens every file) and attaches it to a
/// new non-persistent TUN device `name` without packet information.
fn tun_device(name: &str) -> std::io::Result<File> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an interface name is 1 to 15 bytes",
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _rest: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes on every Linux
    // ABI); `IfReq` is #[repr(C)] with that layout and size, lives across the call, and
    // the descriptor is open. The kernel writes back at most the name, NUL-terminated
    // within IFNAMSIZ.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) | Some(libc::EINVAL) => std::io::Error::new(
                e.kind(),
                format!(
                    "{e} (another device has this name: is another tandem running, or a persistent tun/tap left over?)"
                ),
            ),
            Some(libc::EPERM) => std::io::Error::new(
                e.kind(),
                format!("{e} (making an interface needs CAP_NET_ADMIN)"),
            ),
            _ => e,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernels_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn names_the_kernel_would_refuse_are_refused_first() {
        for bad in ["", "a-name-too-long-", "nul\0"] {
            assert_eq!(
                tun_device(bad).unwrap_err().kind(),
                std::io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
    }

    /// As root, in a network namespace of its own: the device holds what it is told,
    /// and is gone once dropped.
    #[test]
    fn the_device_holds_its_addresses_and_dies_with_its_descriptor() {
        if !rustix::process::geteuid().is_root() || !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("SKIPPED: needs root and /dev/net/tun");
            return;
        }
        let ns = format!("tdm-annt{}", std::process::id());
        let ip = |args: &[&str]| {
            let ok = std::process::Command::new("ip").args(args).status();
            assert!(ok.is_ok_and(|s| s.success()), "ip {args:?}");
        };
        ip(&["netns", "add", &ns]);
        struct Remove(String);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .status();
            }
        }
        let _remove = Remove(ns.clone());
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = File::open(path).unwrap();
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let dev = AnnounceDevice::create("tdm-ann0").await.unwrap();
                let a: IpAddr = "192.0.2.77".parse().unwrap();
                let b: IpAddr = "2001:db8::77".parse().unwrap();
                dev.hold(&[a, b]).await.unwrap();
                assert_eq!(dev.addresses().await.unwrap(), [a, b]);
                let again = AnnounceDevice::create("tdm-ann0").await.unwrap_err();
                assert!(again.to_string().contains("another device"), "{again}");
                dev.hold(&[b]).await.unwrap();
                assert_eq!(dev.addresses().await.unwrap(), [b]);
                // An upgrade: a copy of the descriptor keeps the device and its
                // addresses when the first one closes.
                let copy = dev.descriptor().unwrap();
                drop(dev);
                let dev = AnnounceDevice::adopt(copy, "tdm-ann0").await.unwrap();
                assert_eq!(dev.addresses().await.unwrap(), [b]);
                let handle = dev.handle.clone();
                drop(dev);
                let mut links = handle
                    .link()
                    .get()
                    .match_name("tdm-ann0".to_string())
                    .execute();
                let after = links.try_next().await;
                assert!(
                    !matches!(after, Ok(Some(_))),
                    "the device outlived its descriptor"
                );
            });
        })
        .join()
        .unwrap();
    }
}
