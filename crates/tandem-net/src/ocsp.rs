//! OCSP stapling (RFC 6960, RFC 6066 status_request): the request for a certificate
//! (built by hand in DER: SHA-1 CertID, as every responder accepts), the reading of a
//! response (its status for that serial, thisUpdate and nextUpdate), when to fetch
//! again, and the process's staples, which every SNI resolver attaches to the
//! certificate it serves ([`staple`]). A response whose signature is not the
//! issuer's (or that of a delegated responder the issuer certified for OCSP signing),
//! or past its nextUpdate, or for another certificate, or not `good`, is never stapled.
//!
//! The fetching itself (HTTP POST to the certificate's AIA responder) is the daemon's.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::sign::CertifiedKey;

/// A response fetched for a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staple {
    /// The DER OCSPResponse, as stapled.
    pub response: Vec<u8>,
    /// Its thisUpdate (Unix seconds).
    pub this_update: i64,
    /// Its nextUpdate (Unix seconds), when it has one.
    pub next_update: Option<i64>,
}

/// Why a response is not stapled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    /// The certificate names no OCSP responder, or its issuer is not in the chain.
    #[error("the certificate has no OCSP responder URL or no issuer in its chain")]
    NoResponder,
    /// Not DER of an OCSP response.
    #[error("malformed OCSP response: {0}")]
    Malformed(&'static str),
    /// The responder answered with an error status.
    #[error("the responder answered status {0} (not successful)")]
    Status(u8),
    /// No answer for this certificate's serial number.
    #[error("the response does not answer for this certificate")]
    OtherCertificate,
    /// The certificate is revoked or unknown to the responder.
    #[error("the certificate's status is {0}")]
    NotGood(&'static str),
    /// The signature is neither the issuer's nor a delegated responder's.
    #[error(
        "the response's signature does not verify against the issuer, nor against a certificate in it that the issuer issued for OCSP signing"
    )]
    BadSignature,
}

/// A response without nextUpdate is used this long after its thisUpdate.
pub const NO_NEXT_UPDATE_LIFETIME: i64 = 3600;
/// Clocks differ: a thisUpdate this far in the future is still accepted.
const CLOCK_SKEW: i64 = 300;

/// Whether `staple` may be stapled at `now`: current (thisUpdate not in the future
/// beyond skew, nextUpdate not passed).
pub fn usable(staple: &Staple, now: i64) -> bool {
    let until = staple
        .next_update
        .unwrap_or(staple.this_update + NO_NEXT_UPDATE_LIFETIME);
    staple.this_update - CLOCK_SKEW <= now && now < until
}

/// When to fetch again: half-way from thisUpdate to nextUpdate (an hour's worth
/// without nextUpdate).
pub fn refresh_at(staple: &Staple) -> i64 {
    let until = staple
        .next_update
        .unwrap_or(staple.this_update + NO_NEXT_UPDATE_LIFETIME);
    staple.this_update + (until - staple.this_update).max(0) / 2
}

/// The OCSP request for `leaf` (DER) issued by `issuer` (DER): the responder's URL,
/// the DER request, and the leaf's serial number (to read the response with).
pub fn request(leaf: &[u8], issuer: &[u8]) -> Result<(String, Vec<u8>, Vec<u8>), OcspError> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (_, leaf) =
        x509_parser::parse_x509_certificate(leaf).map_err(|_| OcspError::NoResponder)?;
    let (_, issuer) =
        x509_parser::parse_x509_certificate(issuer).map_err(|_| OcspError::NoResponder)?;
    let url =
        leaf.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityInfoAccess(aia) => aia.accessdescs.iter().find_map(|d| {
                    match (d.access_method.to_id_string().as_str(), &d.access_location) {
                        ("1.3.6.1.5.5.7.48.1", GeneralName::URI(u)) => Some(u.to_string()),
                        _ => None,
                    }
                }),
                _ => None,
            })
            .ok_or(OcspError::NoResponder)?;
    let sha1 = |data: &[u8]| {
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
            .as_ref()
            .to_vec()
    };
    let serial = leaf.raw_serial().to_vec();
    let cert_id = tlv(
        0x30,
        &[
            // sha1 with NULL parameters
            tlv(0x30, &[tlv(0x06, &[&SHA1_OID[..]]), vec![0x05, 0x00]]),
            tlv(0x04, &[sha1(issuer.subject().as_raw())]),
            tlv(0x04, &[sha1(&issuer.public_key().subject_public_key.data)]),
            tlv(0x02, &[&serial[..]]),
        ],
    );
    let request = tlv(
        0x30,
        &[tlv(0x30, &[tlv(0x30, &[tlv(0x30, &[&cert_id[..]])])])],
    );
    Ok((url, request, serial))
}

const SHA1_OID: [u8; 5] = [0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// id-pkix-ocsp-basic, 1.3.6.1.5.5.7.48.1.1.
const BASIC_OID: [u8; 9] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

/// One DER TLV of `tag` around the concatenated `parts`.
fn tlv(tag: u8, parts: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.as_ref().len()).sum();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    for p in parts {
        out.extend_from_slice(p.as_ref());
    }
    out
}

/// Reads one TLV: its tag, contents and what follows.
fn read(input: &[u8]) -> Result<(u8, &[u8], &[u8]), OcspError> {
    let bad = OcspError::Malformed("truncated");
    let (&tag, rest) = input.split_first().ok_or(bad.clone())?;
    let (&first, mut rest) = rest.split_first().ok_or(bad.clone())?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(OcspError::Malformed("length"));
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(bad);
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// Reads `response` (DER OCSPResponse) for the certificate of serial `serial` issued
/// by `issuer` (DER), once its signature verifies (see [`check_signature`]).
pub fn parse(response: &[u8], serial: &[u8], issuer: &[u8]) -> Result<Staple, OcspError> {
    let (_, ocsp, _) = expect(response, 0x30)?;
    let (tag, status, rest) = read(ocsp)?;
    if tag != 0x0a || status.len() != 1 {
        return Err(OcspError::Malformed("responseStatus"));
    }
    if status[0] != 0 {
        return Err(OcspError::Status(status[0]));
    }
    let (_, bytes, _) = expect(rest, 0xa0)?;
    let (_, bytes, _) = expect(bytes, 0x30)?;
    let (_, oid, rest) = expect(bytes, 0x06)?;
    if oid != BASIC_OID {
        return Err(OcspError::Malformed("not a basic OCSP response"));
    }
    let (_, basic, _) = expect(rest, 0x04)?;
    let (_, basic, _) = expect(basic, 0x30)?;
    check_signature(basic, issuer)?;
    let (_, tbs, _) = expect(basic, 0x30)?;
    let mut rest = tbs;
    // version [0], responderID [1] or [2], producedAt, then the responses.
    let responses = loop {
        let (tag, content, after) = read(rest)?;
        rest = after;
        if tag == 0x30 {
            break content;
        }
    };
    let mut singles = responses;
    while !singles.is_empty() {
        let (_, single, after) = expect(singles, 0x30)?;
        singles = after;
        let (_, cert_id, rest) = expect(single, 0x30)?;
        let (_, _, id) = expect(cert_id, 0x30)?;
        let (_, _, id) = expect(id, 0x04)?;
        let (_, _, id) = expect(id, 0x04)?;
        let (_, their_serial, _) = expect(id, 0x02)?;
        if their_serial != serial {
            continue;
        }
        let (status, _, rest) = read(rest)?;
        match status {
            0x80 => {}
            0xa1 => return Err(OcspError::NotGood("revoked")),
            _ => return Err(OcspError::NotGood("unknown")),
        }
        let (_, this_update, rest) = expect(rest, 0x18)?;
        let this_update = generalized_time(this_update)?;
        let next_update = match read(rest) {
            Ok((0xa0, inner, _)) => {
                let (_, t, _) = expect(inner, 0x18)?;
                Some(generalized_time(t)?)
            }
            _ => None,
        };
        return Ok(Staple {
            response: response.to_vec(),
            this_update,
            next_update,
        });
    }
    Err(OcspError::OtherCertificate)
}

/// Checks the signature of a BasicOCSPResponse (`basic`, its contents: tbsResponseData,
/// signatureAlgorithm, signature, [0] certs) against the key of `issuer` (DER), or
/// of a certificate in `certs` that `issuer` signed, with the id-kp-OCSPSigning
/// extended key usage and within its validity (RFC 6960 4.2.2.2).
fn check_signature(basic: &[u8], issuer: &[u8]) -> Result<(), OcspError> {
    use x509_parser::asn1_rs::BitString;
    use x509_parser::prelude::{AlgorithmIdentifier, FromDer, X509Certificate};
    use x509_parser::verify::verify_signature;

    /// The whole TLV `element` that `all` starts with, `rest` following it.
    fn whole<'a>(all: &'a [u8], rest: &[u8]) -> &'a [u8] {
        &all[..all.len() - rest.len()]
    }
    let (_, _, after_tbs) = expect(basic, 0x30)?;
    let tbs = whole(basic, after_tbs);
    let (_, _, after_algorithm) = expect(after_tbs, 0x30)?;
    let (_, algorithm) = AlgorithmIdentifier::from_der(whole(after_tbs, after_algorithm))
        .map_err(|_| OcspError::Malformed("signatureAlgorithm"))?;
    let (_, _, after_signature) = expect(after_algorithm, 0x03)?;
    let (_, signature) = BitString::from_der(whole(after_algorithm, after_signature))
        .map_err(|_| OcspError::Malformed("signature"))?;
    let (_, issuer) = X509Certificate::from_der(issuer).map_err(|_| OcspError::BadSignature)?;
    let signed_by =
        |cert: &X509Certificate| verify_signature(cert.public_key(), &algorithm, &signature, tbs);
    if signed_by(&issuer).is_ok() {
        return Ok(());
    }
    let mut certs = match read(after_signature) {
        Ok((0xa0, inner, _)) => expect(inner, 0x30)?.1,
        _ => &[][..],
    };
    while !certs.is_empty() {
        let (_, _, after) = expect(certs, 0x30)?;
        let der = whole(certs, after);
        certs = after;
        let Ok((_, responder)) = X509Certificate::from_der(der) else {
            continue;
        };
        let delegated = responder.issuer() == issuer.subject()
            && responder
                .verify_signature(Some(issuer.public_key()))
                .is_ok()
            && responder.validity().is_valid()
            && responder
                .extended_key_usage()
                .ok()
                .flatten()
                .is_some_and(|e| e.value.ocsp_signing);
        if delegated && signed_by(&responder).is_ok() {
            return Ok(());
        }
    }
    Err(OcspError::BadSignature)
}

fn expect(input: &[u8], tag: u8) -> Result<(u8, &[u8], &[u8]), OcspError> {
    let (t, content, rest) = read(input)?;
    if t != tag {
        return Err(OcspError::Malformed("unexpected element"));
    }
    Ok((t, content, rest))
}

/// `YYYYMMDDHHMMSS[.fff]Z` as Unix seconds.
fn generalized_time(text: &[u8]) -> Result<i64, OcspError> {
    let bad = OcspError::Malformed("GeneralizedTime");
    let s = std::str::from_utf8(text).map_err(|_| bad.clone())?;
    if s.len() < 15 || !s.ends_with('Z') {
        return Err(bad);
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().map_err(|_| bad.clone());
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm, ss) = (n(8..10)?, n(10..12)?, n(12..14)?);
    // Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// A staple held for a certificate, with the certified key last stapled with it: the
/// handshakes that serve that key share one stapled copy (an `Arc` each), the key is
/// copied once per staple.
#[derive(Debug)]
struct Held {
    staple: Arc<Staple>,
    stapled: ArcSwapOption<Stapled>,
}

/// `key` is `base` with the staple attached.
#[derive(Debug)]
struct Stapled {
    base: Weak<CertifiedKey>,
    key: Arc<CertifiedKey>,
}

impl Held {
    /// `base` with this staple attached: the copy made for it before, else a new one
    /// (kept for the next handshake).
    fn stapled(&self, base: &Arc<CertifiedKey>) -> Arc<CertifiedKey> {
        if let Some(s) = &*self.stapled.load()
            && std::ptr::eq(s.base.as_ptr(), Arc::as_ptr(base))
        {
            return s.key.clone();
        }
        let mut stapled = CertifiedKey::clone(base);
        stapled.ocsp = Some(self.staple.response.clone());
        let key = Arc::new(stapled);
        self.stapled.store(Some(Arc::new(Stapled {
            base: Arc::downgrade(base),
            key: key.clone(),
        })));
        key
    }
}

type Staples = HashMap<Vec<u8>, Arc<Held>>;

fn staples() -> &'static ArcSwap<Staples> {
    static STAPLES: OnceLock<ArcSwap<Staples>> = OnceLock::new();
    STAPLES.get_or_init(ArcSwap::default)
}

/// Staples `staple` to the certificate `leaf` (DER) from now on.
pub fn set_staple(leaf: &[u8], staple: Staple) {
    let held = Arc::new(Held {
        staple: Arc::new(staple),
        stapled: ArcSwapOption::empty(),
    });
    staples().rcu(|old| {
        let mut map = Staples::clone(old);
        map.insert(leaf.to_vec(), held.clone());
        map
    });
}

/// Staples nothing to `leaf` any more (its certificate was found revoked).
pub fn remove_staple(leaf: &[u8]) {
    staples().rcu(|old| {
        let mut map = Staples::clone(old);
        map.remove(leaf);
        map
    });
}

/// The staple held for `leaf`, current or not.
pub fn staple_of(leaf: &[u8]) -> Option<Arc<Staple>> {
    staples().load().get(leaf).map(|h| h.staple.clone())
}

/// Seconds since the Unix epoch: the time base of staples, certificate validity and
/// ACME's schedule.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `key` with the response held for its certificate attached when that is usable
/// now, else `key` without one.
pub fn staple(key: Arc<CertifiedKey>) -> Arc<CertifiedKey> {
    let map = staples().load();
    if map.is_empty() {
        return key;
    }
    let now = unix_now();
    let found = key
        .cert
        .first()
        .and_then(|leaf| map.get(leaf.as_ref()))
        .filter(|h| usable(&h.staple, now));
    match found {
        Some(h) if key.ocsp.as_deref() != Some(&h.staple.response[..]) => h.stapled(&key),
        Some(_) => key,
        None if key.ocsp.is_some() => {
            let mut bare = CertifiedKey::clone(&key);
            bare.ocsp = None;
            Arc::new(bare)
        }
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staple(this: i64, next: Option<i64>) -> Staple {
        Staple {
            response: vec![1],
            this_update: this,
            next_update: next,
        }
    }

    #[test]
    fn a_stale_response_is_not_usable() {
        let s = staple(1000, Some(2000));
        assert!(usable(&s, 1000));
        assert!(usable(&s, 1999));
        assert!(!usable(&s, 2000), "at nextUpdate");
        assert!(!usable(&s, 500), "thisUpdate far in the future");
        assert!(usable(&s, 800), "within the clock skew");
        let s = staple(1000, None);
        assert!(usable(&s, 1000 + NO_NEXT_UPDATE_LIFETIME - 1));
        assert!(!usable(&s, 1000 + NO_NEXT_UPDATE_LIFETIME));
    }

    #[test]
    fn refreshed_half_way_to_next_update() {
        assert_eq!(refresh_at(&staple(1000, Some(2000))), 1500);
        assert_eq!(
            refresh_at(&staple(1000, None)),
            1000 + NO_NEXT_UPDATE_LIFETIME / 2
        );
    }

    #[test]
    fn generalized_times() {
        assert_eq!(generalized_time(b"19700101000000Z").unwrap(), 0);
        assert_eq!(generalized_time(b"20261207153000Z").unwrap(), 1_796_657_400);
        assert_eq!(generalized_time(b"20000229120000Z").unwrap(), 951_825_600);
        assert!(generalized_time(b"2026120715").is_err());
    }

    #[test]
    fn der_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let body = vec![7u8; len];
            let t = tlv(0x04, &[&body[..]]);
            let (tag, content, rest) = read(&t).unwrap();
            assert_eq!((tag, content.len(), rest.len()), (0x04, len, 0));
        }
        assert!(read(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err());
        assert!(read(&[0x30, 0x05, 1]).is_err());
    }

    /// A CA (its certificate and key) and a leaf it issued.
    struct Pki {
        ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
        leaf: Vec<u8>,
    }

    fn new_pki() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tandem test OCSP CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["ocsp.test".into()])
            .unwrap()
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &ca)
            .unwrap();
        Pki {
            ca,
            leaf: leaf.der().to_vec(),
        }
    }

    /// A certificate for `key` that `ca` issued, for OCSP signing or not.
    fn responder(ca: &Pki, key: &rcgen::KeyPair, ocsp_signing: bool) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tandem test OCSP responder");
        if ocsp_signing {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
        }
        params.signed_by(key, &ca.ca).unwrap().der().to_vec()
    }

    /// A `good` OCSP response for `serial`, signed by `signer` (ECDSA P-256 SHA-256),
    /// with `certs` in it.
    fn response(serial: &[u8], signer: &rcgen::KeyPair, certs: &[&[u8]]) -> Vec<u8> {
        use rcgen::SigningKey;
        let time = |t: &str| tlv(0x18, &[t.as_bytes()]);
        let cert_id = tlv(
            0x30,
            &[
                tlv(0x30, &[tlv(0x06, &[&SHA1_OID[..]]), vec![0x05, 0x00]]),
                tlv(0x04, &[[0u8; 20]]),
                tlv(0x04, &[[0u8; 20]]),
                tlv(0x02, &[serial]),
            ],
        );
        let single = tlv(
            0x30,
            &[
                cert_id,
                vec![0x80, 0x00],
                time("20261207150000Z"),
                tlv(0xa0, &[time("20261208150000Z")]),
            ],
        );
        let tbs = tlv(
            0x30,
            &[
                tlv(0xa2, &[tlv(0x04, &[[0u8; 20]])]),
                time("20261207150000Z"),
                tlv(0x30, &[single]),
            ],
        );
        // ecdsa-with-SHA256, 1.2.840.10045.4.3.2
        let algorithm = tlv(
            0x30,
            &[tlv(
                0x06,
                &[[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]],
            )],
        );
        let signature = signer.sign(&tbs).unwrap();
        let mut basic = vec![tbs, algorithm, tlv(0x03, &[&[0u8][..], &signature])];
        if !certs.is_empty() {
            basic.push(tlv(0xa0, &[tlv(0x30, certs)]));
        }
        let basic = tlv(0x30, &basic);
        tlv(
            0x30,
            &[
                vec![0x0a, 0x01, 0x00],
                tlv(
                    0xa0,
                    &[tlv(
                        0x30,
                        &[tlv(0x06, &[&BASIC_OID[..]]), tlv(0x04, &[basic])],
                    )],
                ),
            ],
        )
    }

    fn serial_of(der: &[u8]) -> Vec<u8> {
        x509_parser::parse_x509_certificate(der)
            .unwrap()
            .1
            .raw_serial()
            .to_vec()
    }

    /// A certified key of a new self-signed certificate.
    fn certified() -> Arc<CertifiedKey> {
        let made = rcgen::generate_simple_self_signed(vec!["staple.test".into()]).unwrap();
        let der =
            rustls::pki_types::PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap();
        let signing = crate::tls::provider()
            .key_provider
            .load_private_key(der)
            .unwrap();
        Arc::new(CertifiedKey::new(vec![made.cert.der().clone()], signing))
    }

    #[test]
    fn handshakes_of_one_key_share_its_stapled_copy_until_the_staple_changes() {
        let key = certified();
        let leaf = key.cert[0].to_vec();
        let now = unix_now();
        let current = |response: &[u8]| Staple {
            response: response.to_vec(),
            this_update: now - 10,
            next_update: Some(now + 60),
        };
        set_staple(&leaf, current(b"one"));
        let first = super::staple(key.clone());
        assert_eq!(first.ocsp.as_deref(), Some(&b"one"[..]));
        assert!(!Arc::ptr_eq(&first, &key), "the key itself is not changed");
        let second = super::staple(key.clone());
        assert!(Arc::ptr_eq(&first, &second), "a copy per handshake");
        // Another key of the same certificate (a reload) gets its own copy.
        let reloaded = Arc::new(CertifiedKey::clone(&key));
        let third = super::staple(reloaded.clone());
        assert!(!Arc::ptr_eq(&third, &first));
        assert!(Arc::ptr_eq(&third, &super::staple(reloaded)));
        // A new response: a new copy with it.
        set_staple(&leaf, current(b"two"));
        assert_eq!(
            super::staple(key.clone()).ocsp.as_deref(),
            Some(&b"two"[..])
        );
        // Stale: the key as it is.
        set_staple(
            &leaf,
            Staple {
                response: b"old".to_vec(),
                this_update: now - 120,
                next_update: Some(now - 1),
            },
        );
        assert!(Arc::ptr_eq(&super::staple(key.clone()), &key));
    }

    #[test]
    fn only_a_response_the_issuer_or_its_delegated_responder_signed_is_read() {
        let pki = new_pki();
        let serial = serial_of(&pki.leaf);
        let issuer = pki.ca.der().to_vec();
        let read = |r: &[u8]| parse(r, &serial, &issuer).map(|s| s.this_update);

        // Signed by the issuer.
        let good = response(&serial, pki.ca.key(), &[]);
        assert_eq!(read(&good), Ok(1_796_655_600));
        // Signed by another key: refused.
        let other = rcgen::KeyPair::generate().unwrap();
        assert_eq!(
            read(&response(&serial, &other, &[])),
            Err(OcspError::BadSignature)
        );
        // The issuer's signature over other bytes: refused.
        let mut tampered = good.clone();
        let at = tampered
            .windows(15)
            .position(|w| w == b"20261208150000Z")
            .unwrap();
        tampered[at + 3] = b'7';
        assert_eq!(read(&tampered), Err(OcspError::BadSignature));
        // A delegated responder: a certificate the issuer issued with OCSPSigning.
        let delegated = responder(&pki, &other, true);
        assert_eq!(
            read(&response(&serial, &other, &[&delegated])),
            Ok(1_796_655_600)
        );
        // Without the OCSPSigning key usage: refused.
        let plain = responder(&pki, &other, false);
        assert_eq!(
            read(&response(&serial, &other, &[&plain])),
            Err(OcspError::BadSignature)
        );
        // Issued by another CA of the same name (with the usage): refused.
        let stranger = responder(&new_pki(), &other, true);
        assert_eq!(
            read(&response(&serial, &other, &[&stranger])),
            Err(OcspError::BadSignature)
        );
    }
}
