//! TLS termination of the tcp and http services: the configurations come from
//! `tandem_net::tls` (re-exported here); what is the proxy's own is the ALPN list of
//! an HTTP service and what a PROXY v2 header tells of a session.

pub use tandem_net::tls::{TlsError, acceptor, client_config};

/// The ALPN protocols of an HTTP service.
pub const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// What a PROXY v2 header tells a backend of an established session.
pub fn info(session: &rustls::ServerConnection) -> crate::proxy_header::TlsInfo {
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    };
    // rustls names TLS 1.3 suites TLS13_*; their IANA names begin TLS_.
    let cipher = session
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .map(|name| match name.strip_prefix("TLS13_") {
            Some(rest) => format!("TLS_{rest}"),
            None => name.to_string(),
        });
    crate::proxy_header::TlsInfo {
        version,
        cipher,
        sni: session.server_name().map(str::to_string),
    }
}
