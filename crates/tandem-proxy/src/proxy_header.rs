//! PROXY protocol headers (v1 text, v2 binary), with `ppp`: those tandem sends to
//! backends ([`header`], [`header_with_tls`]), and those it reads from an upstream
//! balancer at the start of a connection ([`parse`], [`receive`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::v2::{Type, WriteToHeader, Writer};
use tandem_config::ProxyProtocol;
use tokio::net::TcpStream;

/// The header announcing a connection from `client` to `local`, or `None` when off.
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Option<Vec<u8>> {
    header_with_tls(version, client, local, None)
}

/// What tandem learnt of a TLS session it terminated, for a v2 header's TLVs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The protocol version, as OpenSSL names it: "TLSv1.3", "TLSv1.2".
    pub version: String,
    /// The cipher suite's IANA name (e.g. "TLS_AES_128_GCM_SHA256").
    pub cipher: Option<String>,
    /// The server name the client asked for (SNI).
    pub sni: Option<String>,
}

/// PP2_CLIENT_SSL: the client connected over TLS.
const PP2_CLIENT_SSL: u8 = 0x01;

/// As [`header`]; with `tls`, a v2 header also carries what HAProxy's
/// `send-proxy-v2-ssl` sends: PP2_TYPE_AUTHORITY (the SNI) and PP2_TYPE_SSL (client
/// flags PP2_CLIENT_SSL, verify 0, with the PP2_SUBTYPE_SSL_VERSION and
/// PP2_SUBTYPE_SSL_CIPHER sub-TLVs). A v1 header has no room for them.
pub fn header_with_tls(
    version: ProxyProtocol,
    client: SocketAddr,
    local: SocketAddr,
    tls: Option<&TlsInfo>,
) -> Option<Vec<u8>> {
    let (client, local) = same_family(client, local);
    match version {
        ProxyProtocol::None => None,
        ProxyProtocol::V1 => Some(
            ppp::v1::Addresses::from((client, local))
                .to_string()
                .into_bytes(),
        ),
        ProxyProtocol::V2 => {
            let mut builder = ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                ppp::v2::Protocol::Stream,
                (client, local),
            );
            if let Some(tls) = tls {
                if let Some(sni) = &tls.sni {
                    builder = builder.write_tlv(Type::Authority, sni.as_bytes()).ok()?;
                }
                builder = builder.write_tlv(Type::SSL, &ssl_tlv(tls).ok()?).ok()?;
            }
            builder.build().ok()
        }
    }
}

/// The value of a PP2_TYPE_SSL TLV: client flags, verify, then the sub-TLVs.
fn ssl_tlv(tls: &TlsInfo) -> std::io::Result<Vec<u8>> {
    let mut value = Writer::default();
    PP2_CLIENT_SSL.write_to(&mut value)?;
    // verify: 0, as HAProxy writes it when no client certificate was asked for.
    0u32.write_to(&mut value)?;
    (Type::SSLVersion, tls.version.as_bytes()).write_to(&mut value)?;
    if let Some(cipher) = &tls.cipher {
        (Type::SSLCipher, cipher.as_bytes()).write_to(&mut value)?;
    }
    Ok(value.finish())
}

/// What the first bytes of a connection hold, as far as a PROXY header goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes, announcing a connection from `client` to `local`;
    /// `None` for the connection's own addresses (v2 LOCAL, as an upstream balancer's
    /// health checks send, v1 UNKNOWN, or no IP family).
    Header {
        /// Length of the header in bytes.
        len: usize,
        /// (client, local) as the header gives them.
        addresses: Option<(SocketAddr, SocketAddr)>,
    },
    /// The start of a header: read again when there are more bytes, up to `need`.
    Incomplete {
        /// How many bytes the whole header may take (v1: its longest).
        need: usize,
    },
    /// The bytes do not begin with a PROXY header.
    NotProxy,
    /// A header that cannot be read: why.
    Malformed(String),
}

/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// The fixed part of a v2 header.
const V2_FIXED: usize = 16;

/// Reads the PROXY header (v1 or v2) at the start of `bytes`.
pub fn parse(bytes: &[u8]) -> Parsed {
    const V1_PREFIX: &[u8] = b"PROXY ";
    let v2_prefix = ppp::v2::PROTOCOL_PREFIX;
    let short = |prefix: &[u8]| bytes.len() < prefix.len() && prefix.starts_with(bytes);
    if bytes.is_empty() {
        return Parsed::Incomplete { need: V2_FIXED };
    }
    if short(V1_PREFIX) {
        return Parsed::Incomplete { need: V1_MAX };
    }
    if short(v2_prefix) {
        return Parsed::Incomplete { need: V2_FIXED };
    }
    if bytes.starts_with(V1_PREFIX) {
        // The line is read whole: ppp takes some cut lines for wrong ones.
        let Some(end) = bytes.iter().take(V1_MAX).position(|&b| b == b'\n') else {
            return if bytes.len() < V1_MAX {
                Parsed::Incomplete { need: V1_MAX }
            } else {
                Parsed::Malformed(format!("v1: no CRLF within {V1_MAX} bytes"))
            };
        };
        return match ppp::v1::Header::try_from(&bytes[..=end]) {
            Ok(h) => Parsed::Header {
                len: h.header.len(),
                addresses: match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => Some((
                        SocketAddr::from((a.source_address, a.source_port)),
                        SocketAddr::from((a.destination_address, a.destination_port)),
                    )),
                    ppp::v1::Addresses::Tcp6(a) => Some((
                        SocketAddr::from((a.source_address, a.source_port)),
                        SocketAddr::from((a.destination_address, a.destination_port)),
                    )),
                    ppp::v1::Addresses::Unknown => None,
                },
            },
            Err(e) => Parsed::Malformed(format!("v1: {e}")),
        };
    }
    if bytes.starts_with(v2_prefix) {
        return match ppp::v2::Header::try_from(bytes) {
            Ok(h) => Parsed::Header {
                len: h.len(),
                addresses: match (h.command, h.addresses) {
                    (ppp::v2::Command::Local, _) => None,
                    (_, ppp::v2::Addresses::IPv4(a)) => Some((
                        SocketAddr::from((a.source_address, a.source_port)),
                        SocketAddr::from((a.destination_address, a.destination_port)),
                    )),
                    (_, ppp::v2::Addresses::IPv6(a)) => Some((
                        SocketAddr::from((a.source_address, a.source_port)),
                        SocketAddr::from((a.destination_address, a.destination_port)),
                    )),
                    // No IP family (or a Unix socket): the connection's own addresses.
                    _ => None,
                },
            },
            Err(ppp::v2::ParseError::Incomplete(_)) => Parsed::Incomplete { need: V2_FIXED },
            Err(ppp::v2::ParseError::Partial(_, len)) => Parsed::Incomplete {
                need: V2_FIXED + len,
            },
            Err(e) => Parsed::Malformed(format!("v2: {e}")),
        };
    }
    Parsed::NotProxy
}

/// Why a connection was refused under `accept_proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source is not in `accept_proxy_from`.
    Untrusted,
    /// It did not begin with a PROXY header (or ended before one).
    NoHeader,
    /// Its header could not be read.
    Malformed,
    /// No whole header came in time.
    Timeout,
}

impl Refusal {
    /// Every reason, in the order of [`Refusal::index`].
    pub const ALL: [Refusal; 4] = [
        Refusal::Untrusted,
        Refusal::NoHeader,
        Refusal::Malformed,
        Refusal::Timeout,
    ];

    /// The reason as logs and metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Untrusted => "untrusted_source",
            Refusal::NoHeader => "no_header",
            Refusal::Malformed => "malformed",
            Refusal::Timeout => "timeout",
        }
    }

    /// A position in [`Refusal::ALL`], for counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Whether `ip` is in one of the networks `from`.
pub fn trusted(from: &[(IpAddr, u8)], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    from.iter()
        .any(|(net, len)| match (net.to_canonical(), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
}

/// Time between two looks at a header that came in part.
const PARTIAL_RETRY: Duration = Duration::from_millis(10);

/// Reads the PROXY header that must begin `stream` within `within`, taking exactly
/// its bytes off the socket: what follows (a client's first bytes, a TLS hello) stays
/// there for whoever reads next. `Ok(None)`: the header says to use the connection's
/// own addresses. The bytes are peeked until the header is whole, so a header split
/// over several segments is waited for (looked at again every 10 ms).
pub async fn receive(
    stream: &TcpStream,
    within: Duration,
) -> Result<Option<(SocketAddr, SocketAddr)>, (Refusal, String)> {
    let deadline = tokio::time::Instant::now() + within;
    let timeout = || {
        (
            Refusal::Timeout,
            format!("no whole header within {within:?}"),
        )
    };
    let mut buf = vec![0u8; 256];
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Err(timeout()),
            Ok(Err(e)) => return Err((Refusal::NoHeader, format!("reading the header: {e}"))),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err((
                Refusal::NoHeader,
                "the connection ended before a whole header".into(),
            ));
        }
        match parse(&buf[..n]) {
            Parsed::Header { len, addresses } => {
                take(stream, len)
                    .await
                    .map_err(|e| (Refusal::NoHeader, format!("reading the header: {e}")))?;
                return Ok(addresses);
            }
            Parsed::Incomplete { need } => {
                if need > buf.len() {
                    buf.resize(need, 0);
                } else if n == seen {
                    // Nothing new since the last look, and peek returns at once while
                    // bytes wait: look again a little later.
                    let later = tokio::time::Instant::now() + PARTIAL_RETRY;
                    tokio::time::sleep_until(later.min(deadline)).await;
                }
                seen = n;
                if tokio::time::Instant::now() >= deadline {
                    return Err(timeout());
                }
            }
            Parsed::NotProxy => {
                return Err((
                    Refusal::NoHeader,
                    "the first bytes are not a PROXY header".into(),
                ));
            }
            Parsed::Malformed(why) => return Err((Refusal::Malformed, why)),
        }
    }
}

/// Reads and drops `len` bytes that are already in `stream`'s receive buffer.
async fn take(stream: &TcpStream, len: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        stream.readable().await?;
        match stream.try_read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
    fn v2_with_tls_carries_the_sni_and_the_ssl_tlv_with_its_sub_tlvs() {
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: Some("TLS_AES_128_GCM_SHA256".into()),
            sni: Some("imap.example.test".into()),
        };
        let h = header_with_tls(
            ProxyProtocol::V2,
            addr("192.0.2.7:40000"),
            addr("198.51.100.1:993"),
            Some(&tls),
        )
        .unwrap();
        let parsed = ppp::v2::Header::try_from(&h[..]).unwrap();
        let tlvs: Vec<_> = parsed.tlvs().map(Result::unwrap).collect();
        assert_eq!(tlvs.len(), 2);
        assert_eq!(tlvs[0].kind, 0x02, "PP2_TYPE_AUTHORITY");
        assert_eq!(&tlvs[0].value[..], b"imap.example.test");
        assert_eq!(tlvs[1].kind, 0x20, "PP2_TYPE_SSL");
        let ssl = &tlvs[1].value;
        assert_eq!(ssl[0], 0x01, "PP2_CLIENT_SSL");
        assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verify");
        let subs: Vec<_> = ppp::v2::TypeLengthValues::from(&ssl[5..])
            .map(Result::unwrap)
            .collect();
        assert_eq!(subs[0].kind, 0x21, "PP2_SUBTYPE_SSL_VERSION");
        assert_eq!(&subs[0].value[..], b"TLSv1.3");
        assert_eq!(subs[1].kind, 0x23, "PP2_SUBTYPE_SSL_CIPHER");
        assert_eq!(&subs[1].value[..], b"TLS_AES_128_GCM_SHA256");
        // v1 has no room for them: the same line as without TLS.
        let v1 = header_with_tls(
            ProxyProtocol::V1,
            addr("192.0.2.7:40000"),
            addr("198.51.100.1:993"),
            Some(&tls),
        );
        assert_eq!(
            v1,
            header(
                ProxyProtocol::V1,
                addr("192.0.2.7:40000"),
                addr("198.51.100.1:993")
            )
        );
    }

    #[test]
    fn received_headers_give_their_addresses_and_length() {
        for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
            for (client, local) in [
                ("192.0.2.7:40000", "198.51.100.1:143"),
                ("[2001:db8::7]:1", "[2001:db8::1]:993"),
            ] {
                let mut h = header(version, addr(client), addr(local)).unwrap();
                let len = h.len();
                h.extend_from_slice(b"a1 LOGIN");
                assert_eq!(
                    parse(&h),
                    Parsed::Header {
                        len,
                        addresses: Some((addr(client), addr(local)))
                    },
                    "{version:?}"
                );
            }
        }
    }

    #[test]
    fn local_and_unknown_headers_mean_the_connection_s_own_addresses() {
        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 16,
                addresses: None
            }
        );
        // LOCAL with addresses: still the connection's own.
        let mut local_with = header(
            ProxyProtocol::V2,
            addr("192.0.2.7:1"),
            addr("198.51.100.1:2"),
        )
        .unwrap();
        local_with[12] = 0x20;
        assert!(matches!(
            parse(&local_with),
            Parsed::Header {
                addresses: None,
                ..
            }
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nEHLO"),
            Parsed::Header {
                len: 15,
                addresses: None
            }
        );
    }

    #[test]
    fn partial_missing_and_malformed_headers_are_told_apart() {
        let v2 = header(
            ProxyProtocol::V2,
            addr("192.0.2.7:40000"),
            addr("198.51.100.1:143"),
        )
        .unwrap();
        assert_eq!(parse(&v2[..5]), Parsed::Incomplete { need: 16 });
        assert_eq!(parse(&v2[..20]), Parsed::Incomplete { need: 28 });
        assert_eq!(parse(b"PROX"), Parsed::Incomplete { need: 107 });
        assert_eq!(
            parse(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000"),
            Parsed::Incomplete { need: 107 }
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::NotProxy);
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Parsed::NotProxy);
        assert_eq!(parse(b"a1 LOGIN"), Parsed::NotProxy);
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2.300 198.51.100.1 1 2\r\n"),
            Parsed::Malformed(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP9 a b 1 2\r\n"),
            Parsed::Malformed(_)
        ));
        assert!(matches!(parse(&[b'P'; 200][..]), Parsed::NotProxy));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(150, b'1');
        assert!(matches!(parse(&long), Parsed::Malformed(_)));
        let mut bad_version = v2.clone();
        bad_version[12] = 0x31;
        assert!(matches!(parse(&bad_version), Parsed::Malformed(_)));
    }

    #[test]
    fn trusted_sources_are_addresses_and_networks() {
        let from = [
            ("10.0.0.0".parse().unwrap(), 8),
            ("192.0.2.7".parse().unwrap(), 32),
            ("2001:db8::".parse().unwrap(), 32),
            ("0.0.0.0".parse().unwrap(), 0),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(trusted(&from[..2], ip("10.200.3.4")));
        assert!(trusted(&from[..2], ip("192.0.2.7")));
        assert!(trusted(&from[..2], ip("::ffff:192.0.2.7")));
        assert!(!trusted(&from[..2], ip("192.0.2.8")));
        assert!(!trusted(&from[..2], ip("11.0.0.1")));
        assert!(trusted(&from[2..3], ip("2001:db8:1::5")));
        assert!(!trusted(&from[2..3], ip("2001:db9::5")));
        assert!(
            trusted(&from[3..], ip("203.0.113.9")),
            "/0 is every IPv4 source"
        );
        assert!(!trusted(&from[3..], ip("::1")));
    }

    proptest::proptest! {
        #[test]
        fn every_prefix_of_a_header_waits_and_no_input_panics(
            v4 in proptest::prelude::any::<bool>(),
            v2 in proptest::prelude::any::<bool>(),
            ports in proptest::prelude::any::<(u16, u16)>(),
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let (c, l) = if v4 {
                (addr(&format!("192.0.2.7:{}", ports.0)), addr(&format!("198.51.100.1:{}", ports.1)))
            } else {
                (addr(&format!("[2001:db8::7]:{}", ports.0)), addr(&format!("[2001:db8::1]:{}", ports.1)))
            };
            let version = if v2 { ProxyProtocol::V2 } else { ProxyProtocol::V1 };
            let h = header(version, c, l).unwrap();
            for cut in 0..h.len() {
                let parsed = parse(&h[..cut]);
                proptest::prop_assert!(matches!(parsed, Parsed::Incomplete { .. }), "{cut}: {parsed:?}");
            }
            let mut whole = h.clone();
            whole.extend_from_slice(&junk);
            proptest::prop_assert_eq!(parse(&whole), Parsed::Header { len: h.len(), addresses: Some((c, l)) });
            let _ = parse(&junk);
        }
    }

    #[test]
    fn none_sends_nothing() {
        assert!(header(ProxyProtocol::None, addr("1.2.3.4:5"), addr("1.2.3.4:6")).is_none());
    }
}
