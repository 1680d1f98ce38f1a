//! The fields tandem writes into what it forwards: the forwarding fields of a request
//! (X-Forwarded-For, -Proto, -Host, Forwarded), Via both ways, the sticky cookie of a
//! response, and the configured header rules. Each path asks these functions which
//! fields to drop from what it received and which to add, and writes them its own way
//! (bytes on the fast path, a header map on the general path).

use std::net::{IpAddr, SocketAddr};

use tandem_config::HeaderRules;

/// The client of a connection as the forwarding fields name it; made once per
/// connection.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its address as X-Forwarded-For writes it.
    ip: String,
    /// Its address as Forwarded's `for=` writes it (RFC 7239 6: an IPv6 address
    /// bracketed and quoted).
    node: String,
    /// `https` when the client spoke TLS to tandem, else `http`.
    proto: &'static str,
}

impl Client {
    /// The client at `ip`, over TLS or not.
    pub fn new(ip: IpAddr, tls: bool) -> Client {
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        Client {
            ip: ip.to_string(),
            node,
            proto: if tls { "https" } else { "http" },
        }
    }
}

/// `a` equals `b` ignoring ASCII case (field names).
fn is(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Hop-by-hop fields (RFC 9110 7.6.1 and the usual extras): never forwarded as such,
/// nor those a Connection field names.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// A field of [`HOP_BY_HOP`].
pub fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| is(name, h))
}

/// The client's fields that tandem replaces with its own: the X-Forwarded fields
/// (Forwarded is a list: the client's elements stay, tandem's comes last).
pub const REPLACED: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// A field of [`REPLACED`].
pub fn replaced(name: &str) -> bool {
    REPLACED.iter().any(|n| is(name, n))
}

/// A field the rules remove or set: whoever wrote it (client, backend or tandem), it
/// does not go out as it was.
pub fn ruled_out(name: &str, rules: &HeaderRules) -> bool {
    rules.remove.iter().any(|r| is(name, r)) || rules.set.iter().any(|(r, _)| is(name, r))
}

/// What tandem adds to a request head it forwards, in order: X-Forwarded-For (the
/// client's first one, then the client), X-Forwarded-Proto, X-Forwarded-Host (with a
/// host), Forwarded (`for`, `proto`, and `host` when it needs no escaping), Via when
/// `via`, then the rules' `set` and `add` fields. A field the rules remove or set is
/// not written by tandem (the rules' own value replaces it). Each field is given to
/// `emit` as its name and the pieces of its value, to be joined.
///
/// The caller drops, from the client's fields, the hop-by-hop ones, those
/// [`replaced`], and those [`ruled_out`]; it keeps Host.
pub fn request_fields(
    client: &Client,
    prior_xff: Option<&[u8]>,
    host: Option<&[u8]>,
    via: bool,
    rules: &HeaderRules,
    mut emit: impl FnMut(&str, &[&[u8]]),
) {
    if !ruled_out("x-forwarded-for", rules) {
        match prior_xff {
            Some(prior) => emit("x-forwarded-for", &[prior, b", ", client.ip.as_bytes()]),
            None => emit("x-forwarded-for", &[client.ip.as_bytes()]),
        }
    }
    if !ruled_out("x-forwarded-proto", rules) {
        emit("x-forwarded-proto", &[client.proto.as_bytes()]);
    }
    if let Some(h) = host
        && !ruled_out("x-forwarded-host", rules)
    {
        emit("x-forwarded-host", &[h]);
    }
    if !ruled_out("forwarded", rules) {
        let base: [&[u8]; 4] = [
            b"for=",
            client.node.as_bytes(),
            b";proto=",
            client.proto.as_bytes(),
        ];
        match host {
            // A quoted-string needs no escape for these (RFC 7239 4).
            Some(h)
                if h.iter()
                    .all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\') =>
            {
                emit(
                    "forwarded",
                    &[base[0], base[1], base[2], base[3], b";host=\"", h, b"\""],
                );
            }
            _ => emit("forwarded", &base),
        }
    }
    tail(via, None, rules, &mut emit);
}

/// What tandem adds to a response head it relays, in order: Via when `via`, the
/// sticky cookie's Set-Cookie (see [`set_cookie`]) when a new backend was chosen, then
/// the rules' `set` and `add` fields; a field the rules remove or set is not written
/// by tandem. The caller drops, from the backend's fields, the hop-by-hop ones and
/// those [`ruled_out`].
pub fn response_fields(
    via: bool,
    set_cookie: Option<&str>,
    rules: &HeaderRules,
    mut emit: impl FnMut(&str, &[&[u8]]),
) {
    tail(via, set_cookie, rules, &mut emit);
}

fn tail(
    via: bool,
    set_cookie: Option<&str>,
    rules: &HeaderRules,
    emit: &mut impl FnMut(&str, &[&[u8]]),
) {
    if via && !ruled_out("via", rules) {
        emit("via", &[b"1.1 tandem"]);
    }
    if let Some(cookie) = set_cookie
        && !ruled_out("set-cookie", rules)
    {
        emit("set-cookie", &[cookie.as_bytes()]);
    }
    for (name, value) in rules.set.iter().chain(&rules.add) {
        emit(name, &[value.as_bytes()]);
    }
}

/// The sticky cookie's value that names `backend` of `pool`: opaque (it does not
/// reveal the address), and the same on every node.
pub fn cookie_id(pool: &str, backend: SocketAddr) -> String {
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(format!("{pool}|{backend}").as_bytes())
    )
}

/// The Set-Cookie value that pins a client to the backend `id` names.
pub fn set_cookie(name: &str, id: &str) -> String {
    format!("{name}={id}; Path=/; HttpOnly; SameSite=Lax")
}

/// The value of cookie `name` in a Cookie field's text.
pub fn cookie_value<'a>(field: &'a str, name: &str) -> Option<&'a str> {
    field
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(f: impl FnOnce(&mut dyn FnMut(&str, &[&[u8]]))) -> Vec<(String, String)> {
        let mut out = Vec::new();
        f(&mut |name: &str, value: &[&[u8]]| {
            out.push((name.to_string(), String::from_utf8(value.concat()).unwrap()));
        });
        out
    }

    fn request(
        client: &Client,
        prior: Option<&str>,
        host: Option<&str>,
        via: bool,
        rules: &HeaderRules,
    ) -> Vec<(String, String)> {
        collect(|emit| {
            request_fields(
                client,
                prior.map(str::as_bytes),
                host.map(str::as_bytes),
                via,
                rules,
                emit,
            )
        })
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn forwarding_fields_name_the_client_and_the_host() {
        let none = HeaderRules::default();
        let v4 = Client::new("192.0.2.7".parse().unwrap(), false);
        assert_eq!(
            request(
                &v4,
                Some("198.51.100.1"),
                Some("www.example.test"),
                true,
                &none
            ),
            pairs(&[
                ("x-forwarded-for", "198.51.100.1, 192.0.2.7"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "www.example.test"),
                (
                    "forwarded",
                    "for=192.0.2.7;proto=http;host=\"www.example.test\""
                ),
                ("via", "1.1 tandem"),
            ])
        );
        // IPv6 is bracketed and quoted in Forwarded only; no Host, no host= and no
        // X-Forwarded-Host; a host that would need escaping is left out of Forwarded.
        let v6 = Client::new("2001:db8::1".parse().unwrap(), true);
        assert_eq!(
            request(&v6, None, None, false, &none),
            pairs(&[
                ("x-forwarded-for", "2001:db8::1"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=\"[2001:db8::1]\";proto=https"),
            ])
        );
        let odd = request(&v6, None, Some("a\"b"), false, &none);
        assert_eq!(odd[2], ("x-forwarded-host".into(), "a\"b".into()));
        assert_eq!(
            odd[3],
            (
                "forwarded".into(),
                "for=\"[2001:db8::1]\";proto=https".into()
            )
        );
    }

    #[test]
    fn the_rules_replace_what_tandem_would_write() {
        let rules = HeaderRules {
            set: vec![("X-Forwarded-Proto".into(), "https".into())],
            add: vec![("X-Env".into(), "prod".into())],
            remove: vec!["forwarded".into(), "Via".into(), "set-cookie".into()],
        };
        let v4 = Client::new("192.0.2.7".parse().unwrap(), false);
        assert_eq!(
            request(&v4, None, Some("h"), true, &rules),
            pairs(&[
                ("x-forwarded-for", "192.0.2.7"),
                ("x-forwarded-host", "h"),
                ("X-Forwarded-Proto", "https"),
                ("X-Env", "prod"),
            ])
        );
        assert!(ruled_out("x-forwarded-proto", &rules) && ruled_out("VIA", &rules));
        assert!(!ruled_out("x-env", &rules));
        // The sticky cookie and Via obey the response rules like any field.
        let cookie = set_cookie("TANDEMID", "00ff");
        assert_eq!(
            collect(|emit| response_fields(true, Some(&cookie), &rules, emit)),
            pairs(&[("X-Forwarded-Proto", "https"), ("X-Env", "prod")])
        );
        assert_eq!(
            collect(|emit| response_fields(true, Some(&cookie), &HeaderRules::default(), emit)),
            pairs(&[
                ("via", "1.1 tandem"),
                (
                    "set-cookie",
                    "TANDEMID=00ff; Path=/; HttpOnly; SameSite=Lax"
                ),
            ])
        );
        assert!(replaced("X-Forwarded-Host") && !replaced("forwarded"));
        assert!(hop_by_hop("Keep-Alive") && hop_by_hop("proxy-authenticate"));
        assert!(!hop_by_hop("x-forwarded-for"));
    }

    #[test]
    fn the_sticky_cookie_names_a_backend_opaquely() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert_eq!(cookie_id("web", a), cookie_id("web", a));
        assert_ne!(cookie_id("web", a), cookie_id("web", b));
        assert_ne!(cookie_id("web", a), cookie_id("api", a));
        assert_eq!(cookie_id("web", a).len(), 16);
        assert!(!cookie_id("web", a).contains("10.0.0.1"));
        assert_eq!(
            cookie_value("a=1; TANDEMID=ab; c=2", "TANDEMID"),
            Some("ab")
        );
        assert_eq!(cookie_value("XTANDEMID=ab", "TANDEMID"), None);
    }
}
