//! `[announce]`: the interface, the addresses (each one a service's), the policy.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::Validator;
use crate::raw::{self, S};
use crate::{Announce, DEFAULT_ANNOUNCE_INTERFACE, Ha};

/// `announce.stop_delay` when the file names none.
const DEFAULT_STOP_DELAY: Duration = Duration::from_secs(1);
/// `announce.announce_delay` when the file names none.
const DEFAULT_ANNOUNCE_DELAY: Duration = Duration::from_secs(2);

impl Validator<'_> {
    pub(super) fn announce(
        &mut self,
        a: &S<raw::RawAnnounce>,
        services: &[S<raw::RawService>],
        ha: &[Ha],
    ) -> Announce {
        let section = a.span();
        let a = a.get_ref();
        let interface = match &a.interface {
            None => DEFAULT_ANNOUNCE_INTERFACE.to_string(),
            Some(name) => {
                let n = name.get_ref();
                let bad = n.is_empty()
                    || n.len() > 15
                    || n.contains(['/', '%', ':'])
                    || n.chars().any(|c| c.is_whitespace() || c.is_control());
                if bad {
                    self.error(
                        name.span(),
                        "announce.interface",
                        format!("{n:?} is not a usable interface name"),
                        "1 to 15 characters without '/', '%', ':' or spaces, e.g. \"tdm-ann0\" (BIRD's direct protocol matches it by name)",
                    );
                }
                n.clone()
            }
        };
        // Every specific address a service listens on, in file order.
        let mut served: Vec<IpAddr> = Vec::new();
        for s in services {
            for l in s.get_ref().listen.get_ref() {
                if let Ok(addr) = l.get_ref().parse::<SocketAddr>() {
                    let ip = addr.ip();
                    if !ip.is_unspecified() && !served.contains(&ip) {
                        served.push(ip);
                    }
                }
            }
        }
        let mut addresses = Vec::new();
        match &a.addresses {
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.error(
                        list.span(),
                        "announce.addresses",
                        "is empty: nothing would be announced".into(),
                        "list service addresses, or leave the key out to announce every address a service listens on",
                    );
                }
                for item in list.get_ref() {
                    let Some(ip) = self.announced_ip(item) else {
                        continue;
                    };
                    if !served.contains(&ip) {
                        self.error(
                            item.span(),
                            "announce.addresses",
                            format!("no service listens on {ip}"),
                            "announce only addresses tandem serves: add it to a service's listen (a service on 0.0.0.0 or [::] names no address)",
                        );
                    } else if addresses.contains(&ip) {
                        self.error(
                            item.span(),
                            "announce.addresses",
                            format!("{ip} is listed twice"),
                            "list each address once",
                        );
                    } else {
                        addresses.push(ip);
                    }
                }
            }
            None => {
                addresses = served
                    .iter()
                    .copied()
                    .filter(|ip| !ip.is_loopback())
                    .collect();
                if addresses.is_empty() {
                    self.error(
                        section.clone(),
                        "announce",
                        "no service listens on a specific address: nothing to announce".into(),
                        "listen on the service addresses to announce (e.g. \"192.0.2.10:80\", not \"0.0.0.0:80\"), or list them in announce.addresses",
                    );
                }
            }
        }
        {
            for ip in &addresses {
                if ha
                    .iter()
                    .any(|h| h.virtual_ips.iter().any(|(v, _)| v == ip))
                {
                    let span = a.addresses.as_ref().map_or(section.clone(), |l| l.span());
                    self.warn(
                        span,
                        "announce.addresses",
                        format!(
                            "{ip} is also a VRRP virtual address: every node announces it while it can serve, master or not"
                        ),
                    );
                }
            }
        }
        Announce {
            interface,
            addresses,
            withdraw_when: a
                .withdraw_when
                .as_ref()
                .map(|w| *w.get_ref())
                .unwrap_or_default(),
            withdraw_delay: self.duration(
                &a.withdraw_delay,
                "announce.withdraw_delay",
                Duration::ZERO,
                false,
            ),
            announce_delay: self.duration(
                &a.announce_delay,
                "announce.announce_delay",
                DEFAULT_ANNOUNCE_DELAY,
                false,
            ),
            stop_delay: self.duration(
                &a.stop_delay,
                "announce.stop_delay",
                DEFAULT_STOP_DELAY,
                false,
            ),
        }
    }

    /// One listed address: an IP, not a network, not loopback, multicast or unspecified.
    fn announced_ip(&mut self, item: &S<String>) -> Option<IpAddr> {
        let text = item.get_ref();
        let hint = "write the bare service address, e.g. \"192.0.2.10\" or \"2001:db8::10\": it is announced as /32 or /128";
        let Ok(ip) = text.parse::<IpAddr>() else {
            let what = if text.contains('/') {
                "is a network, not an address"
            } else {
                "is not an IP address"
            };
            self.error(
                item.span(),
                "announce.addresses",
                format!("{text:?} {what}"),
                hint,
            );
            return None;
        };
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            self.error(
                item.span(),
                "announce.addresses",
                format!("{ip} cannot be announced to routers"),
                hint,
            );
            return None;
        }
        Some(ip)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{Config, WithdrawWhen};

    const BASE: &str = "[[pool]]\nname = \"web\"\nbackends = [{ address = \"10.1.0.11:80\" }]\n\n\
[[service]]\nname = \"www\"\nlisten = [\"192.0.2.10:80\", \"192.0.2.10:443\", \"[2001:db8::10]:80\"]\npool = \"web\"\n\n\
[[service]]\nname = \"any\"\nlisten = [\"0.0.0.0:8080\", \"127.0.0.1:9000\"]\npool = \"web\"\n\n";

    fn parse(section: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{section}"), "t.toml", Path::new("."))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_announce_every_specific_service_address() {
        let c = parse("[announce]\n").unwrap();
        let a = c.announce.unwrap();
        assert_eq!(a.interface, "tdm-ann0");
        assert_eq!(
            a.addresses,
            [
                "192.0.2.10".parse::<std::net::IpAddr>().unwrap(),
                "2001:db8::10".parse().unwrap()
            ]
        );
        assert_eq!(a.withdraw_when, WithdrawWhen::NoHealthyBackend);
        assert_eq!(a.withdraw_delay, std::time::Duration::ZERO);
        assert_eq!(a.announce_delay, std::time::Duration::from_secs(2));
        assert_eq!(a.stop_delay, std::time::Duration::from_secs(1));
        assert!(parse("").unwrap().announce.is_none());
    }

    #[test]
    fn every_key_is_read() {
        let a = parse(
            "[announce]\ninterface = \"tdm-web\"\naddresses = [\"2001:db8::10\"]\nwithdraw_when = \"any-pool-down\"\n\
withdraw_delay = \"300ms\"\nannounce_delay = \"5s\"\nstop_delay = \"0s\"\n",
        )
        .unwrap()
        .announce
        .unwrap();
        assert_eq!(a.interface, "tdm-web");
        assert_eq!(
            a.addresses,
            ["2001:db8::10".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(a.withdraw_when, WithdrawWhen::AnyPoolDown);
        assert_eq!(a.withdraw_delay, std::time::Duration::from_millis(300));
        assert_eq!(a.announce_delay, std::time::Duration::from_secs(5));
        assert!(a.stop_delay.is_zero());
    }

    #[test]
    fn bad_values_are_located_and_explained() {
        let e = parse(
            "[announce]\ninterface = \"a-name-that-is-too-long\"\n\
addresses = [\"192.0.2.99\", \"192.0.2.0/24\", \"127.0.0.1\", \"192.0.2.10\", \"192.0.2.10\"]\n\
withdraw_when = \"sometimes\"\n",
        )
        .unwrap_err();
        // An unknown policy is a type error: it alone is reported, at its place.
        assert!(e.contains("t.toml:18:17: announce.withdraw_when"), "{e}");
        assert!(e.contains("sometimes"), "{e}");
        let e = parse(
            "[announce]\ninterface = \"a-name-that-is-too-long\"\n\
addresses = [\"192.0.2.99\", \"192.0.2.0/24\", \"127.0.0.1\", \"192.0.2.10\", \"192.0.2.10\"]\n\
withdraw_delay = \"soon\"\n",
        )
        .unwrap_err();
        for expected in [
            "t.toml:16:13: announce.interface: \"a-name-that-is-too-long\" is not a usable interface name",
            "t.toml:17:14: announce.addresses: no service listens on 192.0.2.99",
            "t.toml:17:28: announce.addresses: \"192.0.2.0/24\" is a network, not an address",
            "t.toml:17:44: announce.addresses: 127.0.0.1 cannot be announced to routers",
            "t.toml:17:71: announce.addresses: 192.0.2.10 is listed twice",
            "t.toml:18:18: announce.withdraw_delay: \"soon\" is not a duration",
        ] {
            assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
        }
    }

    #[test]
    fn a_node_whose_services_name_no_address_has_nothing_to_announce() {
        let text = "[[pool]]\nname = \"web\"\nbackends = [{ address = \"10.1.0.11:80\" }]\n\n\
[[service]]\nname = \"www\"\nlisten = [\"0.0.0.0:80\"]\npool = \"web\"\n\n[announce]\n";
        let e = Config::parse(text, "t.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml:10:1: announce: no service listens on a specific address"),
            "{e}"
        );
    }

    #[test]
    fn a_vrrp_address_announced_too_is_a_warning() {
        let c = parse(
            "[ha]\ninterface = \"eth0\"\nvrid = 1\nvirtual_ips = [\"192.0.2.10/24\"]\n\n[announce]\n",
        )
        .unwrap();
        assert!(
            c.warnings.iter().any(|w| w
                .render("t.toml", "")
                .contains("also a VRRP virtual address")),
            "{:?}",
            c.warnings
        );
    }
}
