//! tandem's HTTP policy, as pure functions both paths call: which request heads may be
//! forwarded (body framing, RFC 9112 6; request-target, 3.2; Host, 3.2 and 7.2), the
//! fields tandem writes into what it forwards ([`fields`]: forwarding fields, Via, the
//! sticky cookie, header rules), its own answers ([`answers`]: 502/503/504 and the body
//! format), which pool or answer a request's route leads to ([`route`]), and when a
//! request may be sent again ([`retry`]). The fast path asks
//! [`check`] before it rewrites a head (it hands any head refused here to the general
//! path), and the framing watch in front of hyper ([`crate::framing`]) asks it of every
//! head the general path serves, whose answer the general path gives. The limits every
//! HTTP/1 parser of tandem uses live here too.

pub mod answers;
pub mod fields;
pub mod retry;
pub mod route;

pub use answers::{ANSWER_FIELDS, Cause, answer_body, answer_text, reason};
pub use fields::{
    Client, cookie_id, cookie_value, hop_by_hop, replaced, request_fields, response_fields,
    ruled_out, set_cookie,
};
pub use retry::{SendError, is_idempotent, may_send_again};

/// Most header fields in a request head (hyper's default; more: 431).
pub const MAX_HEADERS: usize = 100;

/// Most bytes of chunk extensions in one chunked body (request or response); past
/// them the body is malformed. hyper allows 16 KiB; tandem's watch, in front of it,
/// stops a connection first.
pub const MAX_CHUNK_EXTENSIONS: u64 = 4096;

/// Why a request is refused or not answered, with the status that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 431 or 501 (the client's error); 502, 503 or 504 ([`Cause`]).
    pub status: u16,
    /// What is wrong, for the response text and the log line.
    pub why: &'static str,
}

const fn bad(why: &'static str) -> Refusal {
    Refusal { status: 400, why }
}

/// A refusal for a head that the framing watch could not follow.
pub const LOST: Refusal = bad("request framing could not be followed");
/// A refusal for a head larger than `max_header_size`.
pub const TOO_LARGE: Refusal = Refusal {
    status: 431,
    why: "request head too large",
};
/// A refusal for a chunked body that does not follow RFC 9112.
pub const MALFORMED_BODY: Refusal = bad("malformed chunked request body");

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Content-Length bytes.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
}

/// What a head may be forwarded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted<'h> {
    /// Its body's framing.
    pub framing: Framing,
    /// Its one Host field's value, if any.
    pub host: Option<&'h [u8]>,
    /// For an absolute-form target: its authority (the Host to send) and its path
    /// and query (the origin-form target to send).
    pub absolute: Option<(&'h str, &'h str)>,
}

/// Judges a parsed request head.
pub fn check<'h>(req: &httparse::Request<'_, 'h>) -> Result<Accepted<'h>, Refusal> {
    let version = req.version.unwrap_or(1);
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let absolute = check_target(method, target)?;
    let mut host = None;
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut lengths = 0;
    let mut te: Option<TeState> = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            for v in h.value.split(|&b| b == b',') {
                let n = content_length(v).ok_or(bad("an invalid Content-Length"))?;
                match length {
                    Some(m) if m != n => return Err(bad("conflicting Content-Length values")),
                    _ => length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let state = te.get_or_insert(TeState::default());
            for coding in h.value.split(|&b| b == b',') {
                let coding = trim(coding);
                if coding.is_empty() {
                    continue;
                }
                state.codings += 1;
                state.last_chunked = coding.eq_ignore_ascii_case(b"chunked");
            }
        }
    }
    if hosts > 1 {
        return Err(bad("more than one Host field"));
    }
    if hosts == 0 && version == 1 {
        return Err(bad("no Host field in an HTTP/1.1 request"));
    }
    if let Some(h) = host
        && !valid_host(h)
    {
        return Err(bad("an invalid Host field"));
    }
    let framing = match (te, length) {
        (Some(_), _) if lengths > 0 => {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        (Some(_), _) if version == 0 => {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        (Some(t), _) if !t.last_chunked => {
            return Err(bad("Transfer-Encoding not ending in chunked"));
        }
        (Some(t), _) if t.codings > 1 => {
            return Err(Refusal {
                status: 501,
                why: "a transfer coding other than chunked",
            });
        }
        (Some(_), _) => Framing::Chunked,
        (None, Some(0) | None) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
    };
    Ok(Accepted {
        framing,
        host,
        absolute,
    })
}

#[derive(Debug, Default, Clone, Copy)]
struct TeState {
    codings: u32,
    last_chunked: bool,
}

/// The request-target's form (RFC 9112 3.2): origin-form, absolute-form (its
/// authority and path returned), asterisk-form for OPTIONS, authority-form for
/// CONNECT; never a fragment.
fn check_target<'h>(method: &str, target: &'h str) -> Result<Option<(&'h str, &'h str)>, Refusal> {
    if target.as_bytes().contains(&b'#') {
        return Err(bad("a fragment in the request-target"));
    }
    if target.starts_with('/') || method == "CONNECT" || (target == "*" && method == "OPTIONS") {
        return Ok(None);
    }
    let rest = ["http://", "https://"]
        .iter()
        .find_map(|scheme| {
            target
                .get(..scheme.len())
                .filter(|s| s.eq_ignore_ascii_case(scheme))
                .map(|_| &target[scheme.len()..])
        })
        .ok_or(bad("an invalid request-target"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains('@') || !valid_host(authority.as_bytes()) {
        return Err(bad("an invalid authority in the request-target"));
    }
    let path = match &rest[end..] {
        "" => "/",
        p => p,
    };
    if !path.starts_with('/') {
        // "http://host?q": the path is empty; the backend needs one.
        return Err(bad(
            "an absolute-form target without a path before its query",
        ));
    }
    Ok(Some((authority, path)))
}

/// A Host value (or authority): `uri-host [ ":" port ]`, from reg-name, IPv4 and
/// bracketed IPv6 characters; empty is allowed (RFC 9112 3.2).
fn valid_host(value: &[u8]) -> bool {
    value.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// A Content-Length value: 1 to 18 digits, nothing else.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let v = trim(value);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The framing, the Host and the absolute-form authority and path of a head.
    type Judged = (Framing, Option<String>, Option<(String, String)>);

    fn judge(head: &str) -> Result<Judged, Refusal> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut fields);
        req.parse(head.as_bytes()).unwrap();
        check(&req).map(|a| {
            (
                a.framing,
                a.host.map(|h| String::from_utf8_lossy(h).into_owned()),
                a.absolute.map(|(a, p)| (a.to_string(), p.to_string())),
            )
        })
    }

    #[test]
    fn framing_rules() {
        let ok = |h: &str| judge(h).map(|j| j.0);
        assert_eq!(ok("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(Framing::None));
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        for (head, why) in [
            ("Content-Length: 1\r\nTransfer-Encoding: chunked", "both"),
            ("Content-Length: 1\r\nContent-Length: 2", "conflicting"),
            ("Content-Length: +1", "invalid Content-Length"),
            (
                "Content-Length: 1234567890123456789",
                "invalid Content-Length",
            ),
            ("Transfer-Encoding: chunked, gzip", "not ending in chunked"),
            ("Transfer-Encoding: gzip, chunked", "other than chunked"),
        ] {
            let r = judge(&format!("POST / HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n")).unwrap_err();
            assert!(r.why.contains(why), "{head}: {r:?}");
        }
        let r = judge("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err();
        assert!(r.why.contains("HTTP/1.0"), "{r:?}");
    }

    #[test]
    fn target_and_host_rules() {
        assert_eq!(
            judge("GET http://Other.example:81/a?b HTTP/1.1\r\nHost: x\r\n\r\n").map(|j| j.2),
            Ok(Some(("Other.example:81".to_string(), "/a?b".to_string())))
        );
        assert_eq!(
            judge("GET HTTPS://o.example HTTP/1.1\r\nHost: x\r\n\r\n").map(|j| j.2),
            Ok(Some(("o.example".to_string(), "/".to_string())))
        );
        assert_eq!(
            judge("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").map(|j| j.1),
            Ok(Some("[::1]:8080".to_string()))
        );
        assert!(judge("GET /old HTTP/1.0\r\n\r\n").is_ok());
        assert!(judge("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
        for (head, why) in [
            ("GET / HTTP/1.1\r\n\r\n", "no Host"),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
                "more than one Host",
            ),
            ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "invalid Host"),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid Host"),
            ("GET /x#f HTTP/1.1\r\nHost: a\r\n\r\n", "fragment"),
            (
                "GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
                "invalid request-target",
            ),
            (
                "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
                "invalid request-target",
            ),
            (
                "GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
                "invalid authority",
            ),
            (
                "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
                "invalid authority",
            ),
        ] {
            let r = judge(head).unwrap_err();
            assert!(r.why.contains(why), "{head:?}: {r:?}");
            assert_eq!(r.status, 400);
        }
    }
}
