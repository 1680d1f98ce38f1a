//! Certificates for the tests and TLS clients and servers on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpStream;

/// Writes a new self-signed certificate for `name` and its key in `dir` (NAME.pem,
/// NAME.key, replacing earlier ones); returns their paths.
pub fn self_signed(dir: &Path, name: &str) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// A TLS client connection to `to` asking for `sni`, trusting only the certificates
/// in the PEM file `ca`: the handshake fails unless tandem served one of them.
pub async fn tls_connect(
    to: SocketAddr,
    sni: &str,
    ca: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_over(TcpStream::connect(to).await?, sni, ca).await
}

/// As [`tls_connect`], over a connection already open (after a PROXY header...).
pub async fn tls_over(
    tcp: TcpStream,
    sni: &str,
    ca: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// A TLS acceptor with a new self-signed certificate for `name` (rustls, ring).
pub fn acceptor(name: &str) -> tokio_rustls::TlsAcceptor {
    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
