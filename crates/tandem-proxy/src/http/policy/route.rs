//! Routes: which pool serves a request, or which answer tandem gives itself
//! (`[[service.route]]`, tried in order; the service's `pool` when none matches). Both
//! HTTP paths (and HTTP/2) ask [`decide`] with what they parsed; a tcp service asks
//! [`by_name`] with the ClientHello's server name.

use std::borrow::Cow;

use tandem_config::{HeaderRules, HeaderTest, Route, RouteAction, Service};

use super::answers::{ANSWER_FIELDS, answer_text};

/// What a request is, as routes see it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a, H> {
    /// Its method.
    pub method: &'a str,
    /// Its host: the Host field, or an absolute-form target's authority (HTTP/2's
    /// `:authority`), port and all.
    pub host: Option<&'a [u8]>,
    /// Its request-target in origin form: path and query.
    pub target: &'a str,
    /// Gives its header fields, as (name, value).
    pub headers: H,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'r> {
    /// To the pool of this name.
    Pool(&'r str),
    /// Nowhere: tandem answers it.
    Answer(Answer),
}

/// An answer of tandem's own that a route gives (redirect or respond).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Its status.
    pub status: u16,
    /// Its fields besides the length and Connection, as (name, value).
    pub fields: Vec<(&'static str, String)>,
    /// Its body.
    pub body: String,
}

/// The route a request takes (its index in `routes`, `None` for the service's
/// default) and where that leads.
pub fn decide<'r, 'h, H, I>(
    routes: &'r [Route],
    default_pool: &'r str,
    req: &RequestView<'_, H>,
) -> (Option<usize>, Decision<'r>)
where
    H: Fn() -> I,
    I: Iterator<Item = (&'h str, &'h [u8])>,
{
    // ACME's HTTP-01 validation, before any route: tandem answers its own tokens.
    if req.target.starts_with(tandem_net::acme::HTTP01_PREFIX)
        && let Some(key_authorization) = tandem_net::acme::store().http_answer(req.target)
    {
        return (
            None,
            Decision::Answer(Answer {
                status: 200,
                fields: own_fields(Some("application/octet-stream")),
                body: key_authorization,
            }),
        );
    }
    if routes.is_empty() {
        return (None, Decision::Pool(default_pool));
    }
    let host = req.host.map(host_name);
    for (i, route) in routes.iter().enumerate() {
        if matches(route, host.as_deref(), req) {
            let decision = match &route.action {
                RouteAction::Pool(p) => Decision::Pool(p),
                RouteAction::Redirect { status, location } => {
                    let location = fill(location, host.as_deref().unwrap_or(""), req.target);
                    let body = answer_text(*status, &location);
                    let mut fields = own_fields(None);
                    fields.push(("location", location));
                    Decision::Answer(Answer {
                        status: *status,
                        fields,
                        body,
                    })
                }
                RouteAction::Respond {
                    status,
                    body,
                    content_type,
                } => Decision::Answer(Answer {
                    status: *status,
                    fields: own_fields(Some(content_type)),
                    body: body.clone(),
                }),
            };
            return (Some(i), decision);
        }
    }
    (None, Decision::Pool(default_pool))
}

/// The response header rules for a request that took `route` (as [`decide`] gave
/// it): the service's, except that a route's `hsts` sets Strict-Transport-Security
/// instead of the service's `http.hsts` (one of its `set` rules) and of a backend's
/// own. Only over TLS (a service with `tls` serves TLS only): plain HTTP never gets
/// a route's HSTS (RFC 6797 7.2).
pub fn response_rules(service: &Service, route: Option<usize>) -> Cow<'_, HeaderRules> {
    let rules = &service.http.response_headers;
    let hsts = route
        .and_then(|i| service.routes.get(i))
        .and_then(|r| r.hsts.as_ref())
        .filter(|_| service.tls.is_some());
    let Some(hsts) = hsts else {
        return Cow::Borrowed(rules);
    };
    let mut rules = rules.clone();
    rules
        .set
        .retain(|(name, _)| !name.eq_ignore_ascii_case(STS));
    rules.set.push((STS.to_string(), hsts.clone()));
    Cow::Owned(rules)
}

const STS: &str = "strict-transport-security";

/// The pool a connection whose TLS ClientHello names `server_name` goes to (the
/// first `sni` route it matches, else the service's pool).
pub fn by_name<'r>(
    routes: &'r [Route],
    default_pool: &'r str,
    server_name: Option<&str>,
) -> (Option<usize>, &'r str) {
    let name = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    for (i, route) in routes.iter().enumerate() {
        if let (Some(pattern), Some(name), RouteAction::Pool(pool)) =
            (&route.sni, &name, &route.action)
            && pattern.matches(name)
        {
            return (Some(i), pool);
        }
    }
    (None, default_pool)
}

/// tandem's answer fields, with `content_type` for the usual text.
fn own_fields(content_type: Option<&str>) -> Vec<(&'static str, String)> {
    ANSWER_FIELDS
        .iter()
        .map(|(name, value)| match (*name, content_type) {
            ("content-type", Some(ct)) => (*name, ct.to_string()),
            _ => (*name, value.to_string()),
        })
        .collect()
}

fn matches<'h, H, I>(route: &Route, host: Option<&str>, req: &RequestView<'_, H>) -> bool
where
    H: Fn() -> I,
    I: Iterator<Item = (&'h str, &'h [u8])>,
{
    if let Some(pattern) = &route.host
        && !host.is_some_and(|h| pattern.matches(h))
    {
        return false;
    }
    if let Some(prefix) = &route.path_prefix
        && !req.target.starts_with(prefix.as_str())
    {
        return false;
    }
    if !route.methods.is_empty() && !route.methods.iter().any(|m| m == req.method) {
        return false;
    }
    if let Some(h) = &route.header {
        let found = (req.headers)().any(|(name, value)| {
            name.eq_ignore_ascii_case(&h.name)
                && match &h.test {
                    HeaderTest::Present => true,
                    HeaderTest::Equals(v) => value == v.as_bytes(),
                    HeaderTest::Prefix(p) => value.starts_with(p.as_bytes()),
                }
        });
        if !found {
            return false;
        }
    }
    // An sni condition belongs to tcp services; validation keeps it out of http ones.
    route.sni.is_none()
}

/// A Host value's name: without port and trailing dot, lower case (`[v6]` kept
/// with its brackets).
fn host_name(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let name = if text.starts_with('[') {
        match text.find(']') {
            Some(end) => &text[..=end],
            None => &text[..],
        }
    } else {
        text.rsplit_once(':').map_or(&text[..], |(n, _)| n)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A Location template with `{host}`, `{path}`, `{query}` (`?` and the query, or
/// nothing) and `{uri}` (path and query) filled in.
fn fill(template: &str, host: &str, target: &str) -> String {
    let (path, query) = match target.find('?') {
        Some(q) => (&target[..q], &target[q..]),
        None => (target, ""),
    };
    let mut out = String::with_capacity(template.len() + target.len() + host.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            break;
        };
        match &after[..close] {
            "host" => out.push_str(host),
            "path" => out.push_str(path),
            "query" => out.push_str(query),
            "uri" => out.push_str(target),
            other => {
                out.push('{');
                out.push_str(other);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_config::{HeaderMatch, NamePattern};

    fn route(action: RouteAction) -> Route {
        Route {
            host: None,
            path_prefix: None,
            methods: Vec::new(),
            header: None,
            sni: None,
            action,
            hsts: None,
        }
    }

    fn pool(name: &str) -> RouteAction {
        RouteAction::Pool(name.into())
    }

    fn exact(n: &str) -> Option<NamePattern> {
        Some(NamePattern::Exact(n.into()))
    }

    fn suffix(n: &str) -> Option<NamePattern> {
        Some(NamePattern::Suffix(n.into()))
    }

    /// The pool (or `status location-or-body`) for a request.
    fn go(
        routes: &[Route],
        method: &str,
        host: &str,
        target: &str,
        fields: &[(&str, &str)],
    ) -> String {
        let req = RequestView {
            method,
            host: (!host.is_empty()).then_some(host.as_bytes()),
            target,
            headers: || fields.iter().map(|(n, v)| (*n, v.as_bytes())),
        };
        match decide(routes, "default", &req).1 {
            Decision::Pool(p) => p.to_string(),
            Decision::Answer(a) => {
                let location = a.fields.iter().find(|(n, _)| *n == "location");
                format!(
                    "{} {}",
                    a.status,
                    location.map_or(a.body.as_str(), |(_, l)| l.as_str())
                )
            }
        }
    }

    #[test]
    fn a_pending_acme_token_is_answered_before_any_route() {
        let routes = vec![Route {
            path_prefix: Some("/".into()),
            ..route(pool("www"))
        }];
        let path = "/.well-known/acme-challenge/route-test-token";
        assert_eq!(go(&routes, "GET", "a.test", path, &[]), "www");
        tandem_net::acme::store().add_http_token("route-test-token", "route-test-token.thumb");
        assert_eq!(
            go(&routes, "GET", "a.test", path, &[]),
            "200 route-test-token.thumb"
        );
        assert_eq!(
            go(&[], "GET", "a.test", path, &[]),
            "200 route-test-token.thumb"
        );
        // Another token, or the prefix alone, goes on to the routes.
        let other = "/.well-known/acme-challenge/other";
        assert_eq!(go(&routes, "GET", "a.test", other, &[]), "www");
        tandem_net::acme::store().remove_http_token("route-test-token");
        assert_eq!(go(&routes, "GET", "a.test", path, &[]), "www");
    }

    #[test]
    fn hosts_exact_wildcard_and_default() {
        let routes = vec![
            Route {
                host: exact("www.example.org"),
                ..route(pool("www"))
            },
            Route {
                host: suffix(".example.org"),
                ..route(pool("any"))
            },
        ];
        let at = |host| go(&routes, "GET", host, "/", &[]);
        assert_eq!(at("www.example.org"), "www");
        assert_eq!(at("WWW.Example.ORG:8080"), "www");
        assert_eq!(at("www.example.org."), "www");
        assert_eq!(at("wiki.example.org"), "any");
        assert_eq!(at("a.b.example.org"), "any");
        assert_eq!(at("example.org"), "default");
        assert_eq!(at("badexample.org"), "default");
        assert_eq!(at("[::1]:80"), "default");
        assert_eq!(at(""), "default");
    }

    #[test]
    fn path_method_and_header_all_hold() {
        let routes = vec![Route {
            path_prefix: Some("/api/".into()),
            methods: vec!["POST".into(), "PUT".into()],
            header: Some(HeaderMatch {
                name: "X-Debug".into(),
                test: HeaderTest::Prefix("on".into()),
            }),
            ..route(pool("api"))
        }];
        let h = [("x-debug", "on, please")];
        assert_eq!(go(&routes, "POST", "a", "/api/x?y", &h), "api");
        assert_eq!(go(&routes, "PUT", "a", "/api/", &h), "api");
        assert_eq!(go(&routes, "GET", "a", "/api/x", &h), "default");
        assert_eq!(go(&routes, "post", "a", "/api/x", &h), "default");
        assert_eq!(go(&routes, "POST", "a", "/apix", &h), "default");
        assert_eq!(go(&routes, "POST", "a", "/api/x", &[]), "default");
        assert_eq!(
            go(&routes, "POST", "a", "/api/x", &[("x-debug", "off")]),
            "default"
        );
        let present = vec![Route {
            header: Some(HeaderMatch {
                name: "cookie".into(),
                test: HeaderTest::Present,
            }),
            ..route(pool("c"))
        }];
        assert_eq!(go(&present, "GET", "a", "/", &[("Cookie", "")]), "c");
        let equals = vec![Route {
            header: Some(HeaderMatch {
                name: "x-v".into(),
                test: HeaderTest::Equals("2".into()),
            }),
            ..route(pool("v2"))
        }];
        // Any of several fields of that name.
        assert_eq!(
            go(&equals, "GET", "a", "/", &[("x-v", "1"), ("X-V", "2")]),
            "v2"
        );
        assert_eq!(go(&equals, "GET", "a", "/", &[("x-v", "20")]), "default");
    }

    #[test]
    fn first_match_wins_and_answers_are_filled_in() {
        let routes = vec![
            Route {
                path_prefix: Some("/down".into()),
                ..route(RouteAction::Respond {
                    status: 503,
                    body: "<h1>back soon</h1>".into(),
                    content_type: "text/html".into(),
                })
            },
            route(RouteAction::Redirect {
                status: 308,
                location: "https://{host}{path}{query}#{uri}".into(),
            }),
            route(pool("never")),
        ];
        assert_eq!(
            go(&routes, "GET", "Wiki.Example.org:80", "/a/b?c=d&e", &[]),
            "308 https://wiki.example.org/a/b?c=d&e#/a/b?c=d&e"
        );
        assert_eq!(go(&routes, "GET", "x", "/a", &[]), "308 https://x/a#/a");
        assert_eq!(
            go(&routes, "GET", "x", "/down", &[]),
            "503 <h1>back soon</h1>"
        );
        let req = RequestView {
            method: "GET",
            host: Some(b"x"),
            target: "/down",
            headers: std::iter::empty,
        };
        let (index, Decision::Answer(a)) = decide(&routes, "d", &req) else {
            panic!("an answer")
        };
        assert_eq!(index, Some(0));
        assert!(a.fields.contains(&("content-type", "text/html".into())));
        let req = RequestView {
            target: "/q?x",
            ..req
        };
        let (_, Decision::Answer(a)) = decide(&routes, "d", &req) else {
            panic!("an answer")
        };
        assert_eq!(
            a.body, "308 Permanent Redirect\nhttps://x/q?x#/q?x\n",
            "the body is tandem's own answer format"
        );
    }

    #[test]
    fn server_names_choose_tcp_pools() {
        let routes = vec![
            Route {
                sni: exact("a.example.org"),
                ..route(pool("a"))
            },
            Route {
                sni: suffix(".example.org"),
                ..route(pool("rest"))
            },
        ];
        assert_eq!(by_name(&routes, "d", Some("A.example.org")), (Some(0), "a"));
        assert_eq!(
            by_name(&routes, "d", Some("b.example.org")),
            (Some(1), "rest")
        );
        assert_eq!(by_name(&routes, "d", Some("example.org")), (None, "d"));
        assert_eq!(by_name(&routes, "d", None), (None, "d"));
    }

    /// The Strict-Transport-Security values of a service's response rules for `route`.
    fn sts(service: &Service, route: Option<usize>) -> Vec<String> {
        response_rules(service, route)
            .set
            .iter()
            .filter(|(n, _)| n == STS)
            .map(|(_, v)| v.clone())
            .collect()
    }

    #[test]
    fn a_route_hsts_replaces_the_service_one_over_tls_only() {
        let text = |service_hsts: &str| {
            format!(
                "[global]\nstate_dir = \"/tmp\"\n[[pool]]\nname = \"web\"\n\
backends = [{{ address = \"127.0.0.1:8001\" }}]\n[[service]]\nname = \"www\"\n\
listen = [\"127.0.0.1:8443\"]\nmode = \"http\"\npool = \"web\"\n\
[service.tls.acme]\ndirectory = \"https://ca.test/dir\"\ndomains = [\"a.test\"]\n\
[service.http]\n{service_hsts}\n\
[[service.route]]\npath_prefix = \"/a\"\npool = \"web\"\nhsts = \"max-age=60; preload\"\n\
[[service.route]]\npath_prefix = \"/b\"\npool = \"web\"\n"
            )
        };
        let parse = |t: String| {
            tandem_config::Config::parse(&t, "t.toml", std::path::Path::new("."))
                .unwrap()
                .services
                .remove(0)
        };
        let with = parse(text("hsts = \"1d\""));
        assert_eq!(sts(&with, Some(0)), ["max-age=60; preload"]);
        assert_eq!(sts(&with, Some(1)), ["max-age=86400"]);
        assert_eq!(sts(&with, None), ["max-age=86400"]);
        let without = parse(text(""));
        assert_eq!(sts(&without, Some(0)), ["max-age=60; preload"]);
        assert!(sts(&without, Some(1)).is_empty());
        assert!(matches!(
            response_rules(&without, Some(1)),
            Cow::Borrowed(_)
        ));
        // Plain HTTP (validation refuses such a service; the policy still holds).
        let mut plain = without.clone();
        plain.tls = None;
        assert!(sts(&plain, Some(0)).is_empty());
    }
}
