//! PROXY protocol headers sent to backends (v1 text, v2 binary), built with `ppp`.

use std::net::{IpAddr, SocketAddr};

use tandem_config::ProxyProtocol;

/// The header announcing a connection from `client` to `local`, or `None` when off.
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Option<Vec<u8>> {
    let (client, local) = same_family(client, local);
    match version {
        ProxyProtocol::None => None,
        ProxyProtocol::V1 => Some(
            ppp::v1::Addresses::from((client, local))
                .to_string()
                .into_bytes(),
        ),
        ProxyProtocol::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, local),
        )
        .build()
        .ok(),
    }
}

/// Unmaps IPv4-mapped IPv6 addresses so that a dual-stack listener announces IPv4
/// clients as TCP4, and makes sure both ends share one family: when only one end is
/// IPv4 (mapped or not), both are written as IPv6 (a header with mixed families would
/// be an UNKNOWN one, found by the fuzzer).
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let unmap = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let map = |s: SocketAddr| match s.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    let (ua, ub) = (unmap(a), unmap(b));
    if ua.is_ipv4() == ub.is_ipv4() {
        (ua, ub)
    } else {
        (map(a), map(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mixed_families_are_written_as_ipv6_never_as_unknown() {
        let h = header(
            ProxyProtocol::V1,
            addr("[::ffff:192.0.2.7]:40000"),
            addr("[2001:db8::1]:25"),
        )
        .unwrap();
        assert_eq!(
            h,
            b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 40000 25\r\n".as_slice()
        );
        let h = header(
            ProxyProtocol::V1,
            addr("[::ffff:192.0.2.7]:40000"),
            addr("[::ffff:198.51.100.1]:25"),
        )
        .unwrap();
        assert_eq!(
            h,
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n".as_slice()
        );
    }

    #[test]
    fn v1_is_the_text_line() {
        let h = header(
            ProxyProtocol::V1,
            addr("192.0.2.7:40000"),
            addr("198.51.100.1:25"),
        )
        .unwrap();
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n");
        let h = header(
            ProxyProtocol::V1,
            addr("[2001:db8::7]:1"),
            addr("[2001:db8::1]:993"),
        )
        .unwrap();
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 2001:db8::1 1 993\r\n");
    }

    #[test]
    fn v2_parses_back_to_the_addresses() {
        let h = header(
            ProxyProtocol::V2,
            addr("[::ffff:192.0.2.7]:40000"),
            addr("198.51.100.1:25"),
        )
        .unwrap();
        let parsed = ppp::v2::Header::try_from(&h[..]).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Proxy);
        match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                assert_eq!(
                    a.source_address,
                    "192.0.2.7".parse::<std::net::Ipv4Addr>().unwrap()
                );
                assert_eq!(a.source_port, 40000);
                assert_eq!(a.destination_port, 25);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn none_sends_nothing() {
        assert!(header(ProxyProtocol::None, addr("1.2.3.4:5"), addr("1.2.3.4:6")).is_none());
    }
}
