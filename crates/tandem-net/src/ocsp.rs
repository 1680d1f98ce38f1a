//! OCSP stapling (RFC 6960, RFC 6066 status_request): the request for a certificate
//! (built by hand in DER: SHA-1 CertID, as every responder accepts), the reading of a
//! response (its status for that serial, thisUpdate and nextUpdate), when to fetch
//! again, and the process's staples, which every SNI resolver attaches to the
//! certificate it serves ([`staple`]). A response past its nextUpdate, or for another
//! certificate, or not `good`, is never stapled. The response's signature is the
//! client's to check (as with any stapled response); tandem checks what it staples
//! answers for the certificate it serves and is current.
//!
//! The fetching itself (HTTP POST to the certificate's AIA responder) is the daemon's.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
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

/// Reads `response` (DER OCSPResponse) for the certificate of serial `serial`.
pub fn parse(response: &[u8], serial: &[u8]) -> Result<Staple, OcspError> {
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

type Staples = HashMap<Vec<u8>, Arc<Staple>>;

fn staples() -> &'static ArcSwap<Staples> {
    static STAPLES: OnceLock<ArcSwap<Staples>> = OnceLock::new();
    STAPLES.get_or_init(ArcSwap::default)
}

/// Staples `staple` to the certificate `leaf` (DER) from now on.
pub fn set_staple(leaf: &[u8], staple: Staple) {
    let staple = Arc::new(staple);
    staples().rcu(|old| {
        let mut map = Staples::clone(old);
        map.insert(leaf.to_vec(), staple.clone());
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
    staples().load().get(leaf).cloned()
}

/// `key` with the response held for its certificate attached when that is usable
/// now, else `key` without one.
pub fn staple(key: Arc<CertifiedKey>) -> Arc<CertifiedKey> {
    let map = staples().load();
    if map.is_empty() {
        return key;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let found = key
        .cert
        .first()
        .and_then(|leaf| map.get(leaf.as_ref()))
        .filter(|s| usable(s, now));
    match found {
        Some(s) if key.ocsp.as_deref() != Some(&s.response[..]) => {
            let mut stapled = CertifiedKey::clone(&key);
            stapled.ocsp = Some(s.response.clone());
            Arc::new(stapled)
        }
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
}
