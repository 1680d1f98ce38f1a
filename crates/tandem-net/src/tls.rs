//! TLS configurations: the server side of a service (certificates loaded from PEM
//! files, chosen by SNI) and the client side towards backends (https backends and
//! health checks).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tandem_config::Tls;
use tokio_rustls::TlsAcceptor;

/// Why a TLS configuration could not be built; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read or is not PEM.
    #[error("{}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{}: no certificate in the file", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a kind the crypto provider cannot sign with.
    #[error("{}: {source}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The private key is not the one of the chain's first certificate.
    #[error("{} and {} do not match: {source}", cert.display(), key.display())]
    KeyMismatch {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// `verify = true` without a CA file to verify against.
    #[error("verify = true needs ca_file")]
    NoCaFile,
    /// The CA file cannot be read or is not PEM.
    #[error("ca_file {}: {source}", path.display())]
    CaPem {
        /// The CA file.
        path: PathBuf,
        /// What is wrong with it.
        source: pem::Error,
    },
    /// A certificate of the CA file cannot be a trust anchor.
    #[error("ca_file {}: {source}", path.display())]
    CaCertificate {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// rustls refused the configuration (the crypto provider lacks what it needs).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// The one crypto provider of every TLS configuration of tandem.
/// Its cipher suites, in the server's order of preference: AES-128-GCM, AES-256-GCM,
/// then ChaCha20-Poly1305, TLS 1.3 first, then TLS 1.2 with ECDHE only (ECDSA, RSA).
/// AES-128 comes first as in Mozilla's server-side TLS recommendations: with X25519
/// or P-256 keys (128-bit security) AES-256 adds nothing, and its SHA-384 costs more
/// than SHA-256 on every handshake (ring hashes SHA-256, not SHA-512, with the CPU's
/// SHA instructions: a full handshake's user CPU 106 -> 80 us measured).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// The certificates of the PEM file at `path`, in file order.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, pem::Error> {
    CertificateDer::pem_file_iter(path).and_then(|certs| certs.collect())
}

/// Picks the certificate whose names cover the client's SNI; the first one otherwise.
/// Names of `tls.acme` take ACME's certificate once it is issued (a file's until
/// then); a TLS-ALPN-01 validation (ALPN `acme-tls/1`) gets the challenge
/// certificate of its name.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
    /// The names of `tls.acme`, lower case.
    acme: Vec<String>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = !self.acme.is_empty()
            && hello
                .alpn()
                .is_some_and(|mut p| p.any(|p| p == crate::acme::ACME_TLS_ALPN));
        if validation {
            let sni = hello
                .server_name()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
            return sni.and_then(|n| crate::acme::store().challenge_certificate(&n));
        }
        // With its OCSP response when one is held and current.
        self.choose(&hello).map(crate::ocsp::staple)
    }
}

impl SniResolver {
    fn choose(&self, hello: &ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if !self.acme.is_empty() {
            let sni = hello
                .server_name()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
            let store = crate::acme::store();
            if let Some(key) = sni
                .filter(|n| self.acme.contains(n))
                .and_then(|n| store.issued(&n))
            {
                return Some(key);
            }
            if self.keys.is_empty() {
                return store.issued(&self.acme[0]);
            }
        }
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

/// The certificate chain and key of `pair`, checked to belong together.
fn certified_key(
    pair: &tandem_config::CertPair,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(&pair.cert).map_err(|source| TlsError::Pem {
        path: pair.cert.clone(),
        source,
    })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: pair.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|source| TlsError::Pem {
        path: pair.key.clone(),
        source,
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::Key {
            path: pair.key.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|source| TlsError::KeyMismatch {
            cert: pair.cert.clone(),
            key: pair.key.clone(),
            source,
        })?;
    Ok(certified)
}

/// A name a TLS configuration serves, and its certificate's end of validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedName {
    /// The DNS name (lower case).
    pub name: String,
    /// `"acme"` for a certificate ACME issued, `"file"` for one of `tls.certs`.
    pub source: &'static str,
    /// notAfter (Unix seconds).
    pub not_after: i64,
}

/// The names `tls` serves now, with their certificates' expiry, as the resolver
/// chooses: ACME's certificate for its names once issued, the files' for the rest.
/// Files are read again (a file that cannot be read is left out).
pub fn served_names(tls: &Tls) -> Vec<ServedName> {
    let mut out: Vec<ServedName> = Vec::new();
    let store = crate::acme::store();
    for name in tls.acme.iter().flat_map(|a| &a.domains) {
        if let Some(v) = store
            .issued(name)
            .and_then(|k| crate::acme::validity(k.cert.first()?.as_ref()))
        {
            out.push(ServedName {
                name: name.clone(),
                source: "acme",
                not_after: v.not_after,
            });
        }
    }
    for pair in &tls.certs {
        let Some(v) = read_certificates(&pair.cert)
            .ok()
            .and_then(|c| crate::acme::validity(c.first()?.as_ref()))
        else {
            continue;
        };
        for name in v.names {
            if !out.iter().any(|s| s.name == name) {
                out.push(ServedName {
                    name,
                    source: "file",
                    not_after: v.not_after,
                });
            }
        }
    }
    out
}

/// A certificate chain, leaf first.
pub type Chain = Vec<CertificateDer<'static>>;

/// The chains of the certificate files `tls` serves, for OCSP stapling; a file that
/// cannot be read is left out. Reads the files: call it once per configuration.
pub fn file_chains(tls: &Tls) -> Vec<Chain> {
    tls.certs
        .iter()
        .filter_map(|pair| read_certificates(&pair.cert).ok())
        .collect()
}

/// The chains ACME has issued for `tls`'s names and that are not in `files` already
/// (see [`file_chains`]): read from [`crate::acme::store`], in memory.
pub fn acme_chains(tls: &Tls, files: &[Chain]) -> Vec<Chain> {
    let mut out: Vec<Chain> = Vec::new();
    for name in tls.acme.iter().flat_map(|a| &a.domains) {
        if let Some(key) = crate::acme::store().issued(name)
            && !files.contains(&key.cert)
            && !out.contains(&key.cert)
        {
            out.push(key.cert.clone());
        }
    }
    out
}

/// An acceptor for `tls`: TLS 1.2 and 1.3, offering the ALPN protocols `alpn` (none
/// for a TCP service: a client's ALPN list is then ignored; `acme-tls/1` added with
/// `tls.acme`). Reads the files now, so a reload picks up renewed certificates; ACME's
/// are read from [`crate::acme::store`] at each handshake.
pub fn acceptor(tls: &Tls, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
    let provider = provider();
    let keys = tls
        .certs
        .iter()
        .map(|pair| certified_key(pair, &provider).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            keys,
            acme: tls
                .acme
                .as_ref()
                .map(|a| a.domains.clone())
                .unwrap_or_default(),
        }));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    if tls.acme.is_some() {
        // Offered last: only a validator asks for it, and only it.
        config
            .alpn_protocols
            .push(crate::acme::ACME_TLS_ALPN.to_vec());
    }
    // The server's cipher suite order wins (rustls follows the client's by default):
    // AES-128-GCM, AES-256-GCM, then ChaCha20-Poly1305, forward secret only.
    config.ignore_client_order = true;
    // Resumption: TLS 1.2 by session ID and TLS 1.3 by (stateful) tickets, both from
    // an in-memory cache of this process; no TLS 1.2 session tickets, whose key would
    // have to be rotated and shared across nodes, and which weaken forward secrecy
    // for as long as that key lives. (rustls's default ticketer makes none.)
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
    debug_assert!(!config.ticketer.enabled());
    // One TLS 1.3 ticket per handshake, not rustls's two: each names an entry of the
    // cache and is taken once, and a resumption brings a new one, so a client that
    // resumes always holds one; a second would take a second entry of the cache
    // (halving the clients it holds) and cost every full handshake its derivation,
    // encryption and write (user CPU per full handshake 106 -> 77 us measured).
    config.send_tls13_tickets = 1;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TLS client configuration for talking to backends (health checks, https
/// backends): with `verify`, certificates must chain to `ca_file`; without, any
/// certificate is accepted (private backends often use self-signed ones; the
/// handshake's signatures are still checked).
pub fn client_config(
    verify: bool,
    ca_file: Option<&Path>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = if verify {
        let path = ca_file.ok_or(TlsError::NoCaFile)?;
        let certs = read_certificates(path).map_err(|source| TlsError::CaPem {
            path: path.to_path_buf(),
            source,
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|source| TlsError::CaCertificate {
                path: path.to_path_buf(),
                source,
            })?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth()
    };
    Ok(config)
}

/// The verifier of `verify = false`: any certificate, but the handshake's signatures
/// are checked with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_config::CertPair;
    use tokio_rustls::TlsConnector;

    /// A self-signed certificate for `name`, written as `name.pem` and `name.key`.
    fn self_signed(dir: &Path, name: &str) -> CertPair {
        let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let pair = CertPair {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&pair.cert, made.cert.pem()).unwrap();
        std::fs::write(&pair.key, made.signing_key.serialize_pem()).unwrap();
        pair
    }

    /// A handshake over an in-memory pipe: the server's chosen certificate, ALPN
    /// protocol and cipher suite, or the client's error.
    async fn handshake(
        server: TlsAcceptor,
        client: rustls::ClientConfig,
        sni: &str,
    ) -> Result<
        (
            CertificateDer<'static>,
            Option<Vec<u8>>,
            rustls::CipherSuite,
        ),
        std::io::Error,
    > {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let connect = TlsConnector::from(Arc::new(client)).connect(name, client_io);
        let (client, _server) = tokio::join!(connect, server.accept(server_io));
        let session = client?;
        let (_, connection) = session.get_ref();
        Ok((
            connection.peer_certificates().unwrap()[0].clone(),
            connection.alpn_protocol().map(<[u8]>::to_vec),
            connection.negotiated_cipher_suite().unwrap().suite(),
        ))
    }

    /// Why an acceptor for the one certificate `pair` cannot be built.
    fn refused(pair: CertPair) -> TlsError {
        match acceptor(
            &Tls {
                certs: vec![pair],
                acme: None,
            },
            &[],
        ) {
            Ok(_) => panic!("the certificate is accepted"),
            Err(e) => e,
        }
    }

    fn der(pair: &CertPair) -> CertificateDer<'static> {
        read_certificates(&pair.cert).unwrap().remove(0)
    }

    #[tokio::test]
    async fn chooses_the_certificate_by_sni_and_the_first_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed(dir.path(), "a.test");
        let b = self_signed(dir.path(), "b.test");
        let tls = Tls {
            certs: vec![a.clone(), b.clone()],
            acme: None,
        };
        let server = acceptor(&tls, &[]).unwrap();
        let any = || client_config(false, None).unwrap();
        let (cert, _, _) = handshake(server.clone(), any(), "b.test").await.unwrap();
        assert_eq!(cert, der(&b));
        let (cert, _, _) = handshake(server.clone(), any(), "a.test").await.unwrap();
        assert_eq!(cert, der(&a));
        let (cert, _, _) = handshake(server, any(), "other.test").await.unwrap();
        assert_eq!(cert, der(&a));
    }

    #[tokio::test]
    async fn offers_the_alpn_protocols_given() {
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls {
            certs: vec![self_signed(dir.path(), "a.test")],
            acme: None,
        };
        let mut client = client_config(false, None).unwrap();
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let http = acceptor(&tls, &[b"http/1.1"]).unwrap();
        let (_, alpn, _) = handshake(http, client.clone(), "a.test").await.unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        let tcp = acceptor(&tls, &[]).unwrap();
        let (_, alpn, _) = handshake(tcp, client, "a.test").await.unwrap();
        assert_eq!(alpn, None);
    }

    /// The client prefers ChaCha20; the server's order (AES-128-GCM first) wins.
    #[tokio::test]
    async fn the_servers_cipher_order_wins() {
        use rustls::crypto::ring::cipher_suite as cs;
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls {
            certs: vec![self_signed(dir.path(), "a.test")],
            acme: None,
        };
        let chacha_first = CryptoProvider {
            cipher_suites: vec![
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                cs::TLS13_AES_128_GCM_SHA256,
                cs::TLS13_AES_256_GCM_SHA384,
            ],
            ..rustls::crypto::ring::default_provider()
        };
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(chacha_first))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                provider().signature_verification_algorithms,
            )))
            .with_no_client_auth();
        let server = acceptor(&tls, &[]).unwrap();
        let (_, _, suite) = handshake(server, client, "a.test").await.unwrap();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }

    #[tokio::test]
    async fn verify_checks_the_chain_against_the_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed(dir.path(), "a.test");
        let other = self_signed(dir.path(), "other.test");
        let server = || {
            acceptor(
                &Tls {
                    certs: vec![a.clone()],
                    acme: None,
                },
                &[],
            )
            .unwrap()
        };
        let trusting = client_config(true, Some(&a.cert)).unwrap();
        handshake(server(), trusting, "a.test").await.unwrap();
        let strange = client_config(true, Some(&other.cert)).unwrap();
        let refused = handshake(server(), strange, "a.test").await.unwrap_err();
        // (rcgen names every self-signed issuer alike: the signature check refuses it.)
        assert!(
            refused.to_string().contains("invalid peer certificate"),
            "{refused}"
        );
        let any = client_config(false, None).unwrap();
        handshake(server(), any, "a.test").await.unwrap();
    }

    #[test]
    fn served_names_come_from_acme_first_then_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed(dir.path(), "served-a.test");
        let tls = Tls {
            certs: vec![a],
            acme: Some(tandem_config::Acme {
                directory: "https://ca.test/dir".into(),
                contact: vec![],
                domains: vec!["served-a.test".into(), "served-b.test".into()],
                challenge: Default::default(),
                ca_file: "/nonexistent".into(),
            }),
        };
        let names = served_names(&tls);
        assert_eq!(names.len(), 1);
        assert_eq!(
            (names[0].name.as_str(), names[0].source),
            ("served-a.test", "file")
        );
        let issued = rcgen::generate_simple_self_signed(vec!["served-a.test".into()]).unwrap();
        let key =
            crate::acme::certified_key(&issued.cert.pem(), &issued.signing_key.serialize_pem())
                .unwrap();
        crate::acme::store().set_issued(&["served-a.test".into()], Arc::new(key));
        let names = served_names(&tls);
        assert_eq!(names.len(), 1);
        assert_eq!(names[0].source, "acme");
        assert!(names[0].not_after > 0);
    }

    /// Accepts any certificate (as `verify = false` does) and keeps the OCSP response
    /// the server stapled.
    #[derive(Debug)]
    struct SeesStaple(std::sync::Mutex<Option<Vec<u8>>>, AcceptAnyCertificate);

    impl ServerCertVerifier for SeesStaple {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.0.lock().unwrap() = (!ocsp_response.is_empty()).then(|| ocsp_response.to_vec());
            self.1
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.1.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.1.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.1.supported_verify_schemes()
        }
    }

    #[tokio::test]
    async fn a_current_ocsp_response_is_stapled_and_a_stale_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let pair = self_signed(dir.path(), "staple.test");
        let tls = Tls {
            certs: vec![pair.clone()],
            acme: None,
        };
        let seen = || async {
            let verifier = Arc::new(SeesStaple(
                Default::default(),
                AcceptAnyCertificate(provider().signature_verification_algorithms),
            ));
            let client = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            handshake(acceptor(&tls, &[]).unwrap(), client, "staple.test")
                .await
                .unwrap();
            verifier.0.lock().unwrap().take()
        };
        assert_eq!(seen().await, None, "nothing held: nothing stapled");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let leaf = der(&pair);
        crate::ocsp::set_staple(
            leaf.as_ref(),
            crate::ocsp::Staple {
                response: b"current".to_vec(),
                this_update: now - 10,
                next_update: Some(now + 60),
            },
        );
        assert_eq!(seen().await.as_deref(), Some(&b"current"[..]));
        crate::ocsp::set_staple(
            leaf.as_ref(),
            crate::ocsp::Staple {
                response: b"stale".to_vec(),
                this_update: now - 120,
                next_update: Some(now - 1),
            },
        );
        assert_eq!(seen().await, None, "past its nextUpdate: not stapled");
    }

    #[test]
    fn errors_name_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed(dir.path(), "a.test");
        let b = self_signed(dir.path(), "b.test");
        let crossed = CertPair {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = refused(crossed);
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "{} and {} do not match",
                a.cert.display(),
                b.key.display()
            )),
            "{text}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let no_cert = CertPair {
            cert: empty.clone(),
            key: a.key.clone(),
        };
        let e = refused(no_cert);
        assert_eq!(
            e.to_string(),
            format!("{}: no certificate in the file", empty.display())
        );

        let missing = dir.path().join("missing.pem");
        let e = client_config(true, Some(&missing)).unwrap_err();
        assert!(matches!(e, TlsError::CaPem { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("ca_file {}: ", missing.display())),
            "{e}"
        );

        let e = client_config(true, None).unwrap_err();
        assert_eq!(e.to_string(), "verify = true needs ca_file");
    }
}
