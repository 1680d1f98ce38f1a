//! TLS termination: certificates loaded from PEM files, chosen by SNI.

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

/// An acceptor for `tls`: TLS 1.2 and 1.3, ALPN h2 and http/1.1. Reads the files now,
/// so a reload picks up renewed certificates.
pub fn acceptor(tls: &Tls) -> Result<TlsAcceptor, String> {
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
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
