//! The PROXY protocol headers tandem sends, for any pair of addresses, are read back
//! by an independent parser (the ppp crate) as exactly those addresses.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use tandem_config::ProxyProtocol;

fn addr(bytes: &[u8], v6: bool) -> SocketAddr {
    let mut b = [0u8; 18];
    let n = bytes.len().min(18);
    b[..n].copy_from_slice(&bytes[..n]);
    let port = u16::from_be_bytes([b[16], b[17]]);
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).unwrap()))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    };
    SocketAddr::new(ip, port)
}

/// Addresses as announced: an IPv4-mapped IPv6 address is the IPv4 one.
fn canonical(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let c = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    (c(a), c(b))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 37 {
        return;
    }
    let v6 = data[0] & 1 == 1;
    let client = addr(&data[1..19], v6);
    let local = addr(&data[19..37], v6);
    for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
        let header = tandem_proxy::proxy_header::header(version, client, local).expect("a header");
        match version {
            ProxyProtocol::V1 => {
                let parsed = ppp::v1::Header::try_from(std::str::from_utf8(&header).unwrap()).expect("v1 parses");
                let (src, dst) = match parsed.addresses {
                    ppp::v1::Addresses::Tcp4(a) => (
                        SocketAddr::new(a.source_address.into(), a.source_port),
                        SocketAddr::new(a.destination_address.into(), a.destination_port),
                    ),
                    ppp::v1::Addresses::Tcp6(a) => (
                        SocketAddr::new(a.source_address.into(), a.source_port),
                        SocketAddr::new(a.destination_address.into(), a.destination_port),
                    ),
                    other => panic!("unexpected {other:?}"),
                };
                assert_eq!(canonical(src, dst), canonical(client, local));
            }
            _ => {
                let parsed = ppp::v2::Header::try_from(&header[..]).expect("v2 parses");
                assert_eq!(parsed.len(), header.len());
                let (src, dst) = match parsed.addresses {
                    ppp::v2::Addresses::IPv4(a) => (
                        SocketAddr::new(a.source_address.into(), a.source_port),
                        SocketAddr::new(a.destination_address.into(), a.destination_port),
                    ),
                    ppp::v2::Addresses::IPv6(a) => (
                        SocketAddr::new(a.source_address.into(), a.source_port),
                        SocketAddr::new(a.destination_address.into(), a.destination_port),
                    ),
                    other => panic!("unexpected {other:?}"),
                };
                assert_eq!(canonical(src, dst), canonical(client, local));
            }
        }
    }
});
