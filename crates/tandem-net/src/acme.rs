//! What the serving side needs of ACME, one per process: the certificates ACME issued
//! (by name, swapped without a restart), the TLS-ALPN-01 challenge certificates
//! (RFC 8737) and the HTTP-01 key authorizations (RFC 8555 8.3) pending. The ACME
//! manager of the daemon writes here; every TLS acceptor's SNI resolver and every
//! HTTP service read from here, each read one atomic load.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The ALPN protocol of TLS-ALPN-01 validation.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix of HTTP-01 challenges.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Why a certificate could not be made usable.
#[derive(Debug, thiserror::Error)]
pub enum AcmeKeyError {
    /// The PEM text holds no certificate or no usable key.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the key or the pair.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// rcgen could not make the challenge certificate.
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
}

/// An issued certificate as served: the chain and key, and the OCSP response stapled
/// (`CertifiedKey::ocsp`).
type Keys = HashMap<String, Arc<CertifiedKey>>;

/// The process's ACME material. See [`store`].
#[derive(Debug, Default)]
pub struct AcmeStore {
    issued: ArcSwap<Keys>,
    alpn: ArcSwap<Keys>,
    http: ArcSwap<HashMap<String, String>>,
}

/// The one [`AcmeStore`] of this process.
pub fn store() -> &'static AcmeStore {
    static STORE: OnceLock<AcmeStore> = OnceLock::new();
    STORE.get_or_init(AcmeStore::default)
}

impl AcmeStore {
    /// The certificate ACME issued for `name` (lower case), if any.
    pub fn issued(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.issued.load().get(name).cloned()
    }

    /// Serves `key` for each of `names` from now on (new handshakes).
    pub fn set_issued(&self, names: &[String], key: Arc<CertifiedKey>) {
        self.issued.rcu(|old| {
            let mut map = Keys::clone(old);
            for n in names {
                map.insert(n.clone(), key.clone());
            }
            map
        });
    }

    /// The TLS-ALPN-01 certificate for `name`, while its challenge is pending.
    pub fn challenge_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.load().get(name).cloned()
    }

    /// Answers TLS-ALPN-01 for `name` with a certificate carrying `digest` (the
    /// SHA-256 of the key authorization) in its acmeIdentifier extension.
    pub fn add_alpn_challenge(&self, name: &str, digest: &[u8]) -> Result<(), AcmeKeyError> {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
        params
            .custom_extensions
            .push(rcgen::CustomExtension::new_acme_identifier(digest));
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        // (Not through keys_match: webpki refuses the critical acmeIdentifier
        // extension; the pair was made together just now.)
        let certified = parse(&cert.pem(), &key.serialize_pem())?;
        self.alpn.rcu(|old| {
            let mut map = Keys::clone(old);
            map.insert(name.to_string(), Arc::new(certified.clone()));
            map
        });
        Ok(())
    }

    /// Ends the TLS-ALPN-01 challenge of `name`.
    pub fn remove_alpn_challenge(&self, name: &str) {
        self.alpn.rcu(|old| {
            let mut map = Keys::clone(old);
            map.remove(name);
            map
        });
    }

    /// Answers HTTP-01 for `token` with `key_authorization`.
    pub fn add_http_token(&self, token: &str, key_authorization: &str) {
        self.http.rcu(|old| {
            let mut map = HashMap::clone(old);
            map.insert(token.to_string(), key_authorization.to_string());
            map
        });
    }

    /// Ends the HTTP-01 challenge of `token`.
    pub fn remove_http_token(&self, token: &str) {
        self.http.rcu(|old| {
            let mut map = HashMap::clone(old);
            map.remove(token);
            map
        });
    }

    /// The body that answers a request for `target` (path and query), when it asks for
    /// a pending HTTP-01 token.
    pub fn http_answer(&self, target: &str) -> Option<String> {
        let token = target.strip_prefix(HTTP01_PREFIX)?;
        let map = self.http.load();
        if map.is_empty() {
            return None;
        }
        map.get(token).cloned()
    }
}

/// The chain (PEM, leaf first) and private key (PEM) as rustls serves them, checked
/// to belong together.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, AcmeKeyError> {
    let certified = parse(chain_pem, key_pem)?;
    certified.keys_match()?;
    Ok(certified)
}

fn parse(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, AcmeKeyError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AcmeKeyError::Pem(format!("certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(AcmeKeyError::Pem("no certificate in the chain".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| AcmeKeyError::Pem(format!("private key: {e}")))?;
    let signing = crate::tls::provider().key_provider.load_private_key(key)?;
    Ok(CertifiedKey::new(chain, signing))
}

/// What a certificate says of itself: its DNS names (lower case), and the start and
/// end of its validity (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    /// Subject alternative names of type DNS.
    pub names: Vec<String>,
    /// notBefore.
    pub not_before: i64,
    /// notAfter.
    pub not_after: i64,
}

/// The [`Validity`] of a DER certificate; `None` when it does not parse.
pub fn validity(der: &[u8]) -> Option<Validity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Validity {
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_tokens_answer_until_removed() {
        let s = AcmeStore::default();
        assert_eq!(s.http_answer("/.well-known/acme-challenge/abc"), None);
        s.add_http_token("abc", "abc.thumb");
        assert_eq!(
            s.http_answer("/.well-known/acme-challenge/abc").as_deref(),
            Some("abc.thumb")
        );
        assert_eq!(s.http_answer("/.well-known/acme-challenge/abd"), None);
        assert_eq!(s.http_answer("/abc"), None);
        s.remove_http_token("abc");
        assert_eq!(s.http_answer("/.well-known/acme-challenge/abc"), None);
    }

    #[test]
    fn a_challenge_certificate_carries_the_digest() {
        let s = AcmeStore::default();
        s.add_alpn_challenge("a.test", &[7u8; 32]).unwrap();
        let key = s.challenge_certificate("a.test").unwrap();
        let der = key.cert[0].as_ref();
        // id-pe-acmeIdentifier 1.3.6.1.5.5.7.1.31, then OCTET STRING(OCTET STRING(32)).
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        assert!(der.windows(oid.len()).any(|w| w == oid));
        assert!(der.windows(32).any(|w| w == [7u8; 32]));
        let v = validity(der).unwrap();
        assert_eq!(v.names, ["a.test"]);
        assert!(v.not_after > v.not_before);
        s.remove_alpn_challenge("a.test");
        assert!(s.challenge_certificate("a.test").is_none());
    }
}
