//! TLS termination (tcp and http services): certificates loaded from PEM files,
//! chosen by SNI; and the client side of TLS to backends.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tandem_config::Tls;
use tokio_rustls::TlsAcceptor;

/// Picks the certificate whose names cover the client's SNI; the first one otherwise.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wanted = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n.to_string()).ok());
        if let Some(name) = wanted {
            for key in &self.keys {
                let Some(cert) = key.cert.first() else {
                    continue;
                };
                if let Ok(ee) = webpki::EndEntityCert::try_from(cert)
                    && ee.verify_is_valid_for_subject_name(&name).is_ok()
                {
                    return Some(key.clone());
                }
            }
        }
        self.keys.first().cloned()
    }
}

/// The ALPN protocols of an HTTP service.
pub const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// An acceptor for `tls`: TLS 1.2 and 1.3, offering the ALPN protocols `alpn` (none
/// for a TCP service: a client's ALPN list is then ignored). Reads the files now, so a
/// reload picks up renewed certificates.
pub fn acceptor(tls: &Tls, alpn: &[&[u8]]) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut keys = Vec::new();
    for pair in &tls.certs {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("{}: {e}", pair.cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "{}: no certificate in the file",
                pair.cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&pair.key)
            .map_err(|e| format!("{}: {e}", pair.key.display()))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("{}: {e}", pair.key.display()))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| {
            format!(
                "{} and {} do not match: {e}",
                pair.cert.display(),
                pair.key.display()
            )
        })?;
        keys.push(Arc::new(certified));
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { keys }));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // The server's cipher suite order wins (rustls follows the client's by default):
    // AES-256-GCM, AES-128-GCM, then ChaCha20-Poly1305, forward secret only.
    config.ignore_client_order = true;
    // Resumption: TLS 1.2 by session ID and TLS 1.3 by (stateful) tickets, both from
    // an in-memory cache of this process; no TLS 1.2 session tickets, whose key would
    // have to be rotated and shared across nodes, and which weaken forward secrecy
    // for as long as that key lives. (rustls's default ticketer makes none.)
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
    debug_assert!(!config.ticketer.enabled());
    Ok(TlsAcceptor::from(Arc::new(config)))
}

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

/// A TLS client configuration for talking to backends (health checks, https
/// backends): with `verify`, certificates must chain to `ca_file`; without, any
/// certificate is accepted (private backends often use self-signed ones; the
/// handshake's signatures are still checked).
pub fn client_config(
    verify: bool,
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let config = if verify {
        let path = ca_file.ok_or("verify = true needs ca_file")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    };
    Ok(config)
}

/// The verifier of `verify = false`.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
