//! `[[service.route]]` as `tandem check` users see it: what parses, and every wrong
//! route named by line, column and key.

use std::path::Path;

use tandem_config::*;

const POOLS: &str = r#"
[[pool]]
name = "web"
backends = [{ address = "127.0.0.1:8001" }]

[[pool]]
name = "wiki"
backends = [{ address = "127.0.0.1:8002" }]
"#;

fn http(routes: &str) -> String {
    format!(
        "{POOLS}\n[[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:8080\"]\nmode = \"http\"\npool = \"web\"\n{routes}"
    )
}

fn tcp(extra: &str, routes: &str) -> String {
    format!(
        "{POOLS}\n[[service]]\nname = \"tls\"\nlisten = [\"127.0.0.1:8443\"]\npool = \"web\"\n{extra}{routes}"
    )
}

fn errors(text: &str) -> Vec<String> {
    match Config::parse(text, "t.toml", Path::new(".")) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

/// The line (1-based) of the `n`th line holding `needle`.
fn line(text: &str, needle: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)
        .unwrap_or_else(|| panic!("no {needle:?} #{n}"))
        .0
        + 1
}

/// Asserts one error line starts with `t.toml:LINE:COL: KEY: ` and contains `what`.
fn assert_error(errors: &[String], line: usize, col: usize, key: &str, what: &str) {
    let prefix = format!("t.toml:{line}:{col}: {key}: ");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&prefix) && e.contains(what)),
        "no error {prefix}...{what}... in:\n{}",
        errors.join("\n")
    );
}

#[test]
fn routes_parse_in_order_with_their_actions() {
    let text = http(
        r#"
[[service.route]]
host = "WWW.Example.org."
path_prefix = "/api/"
method = ["GET", "HEAD"]
header = { name = "X-Debug", prefix = "on" }
pool = "wiki"

[[service.route]]
host = "*.example.org"
redirect = { status = 308, location = "https://{host}{uri}" }

[[service.route]]
header = { name = "Cookie", present = true }
respond = { status = 503, body = "<h1>back soon</h1>", content_type = "text/html" }
"#,
    );
    let c = Config::parse(&text, "t.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let routes = &c.services[0].routes;
    assert_eq!(routes.len(), 3);
    assert_eq!(
        routes[0],
        Route {
            host: Some(NamePattern::Exact("www.example.org".into())),
            path_prefix: Some("/api/".into()),
            methods: vec!["GET".into(), "HEAD".into()],
            header: Some(HeaderMatch {
                name: "X-Debug".into(),
                test: HeaderTest::Prefix("on".into()),
            }),
            sni: None,
            action: RouteAction::Pool("wiki".into()),
            hsts: None,
        }
    );
    assert_eq!(
        routes[1].host,
        Some(NamePattern::Suffix(".example.org".into()))
    );
    assert_eq!(
        routes[1].action,
        RouteAction::Redirect {
            status: 308,
            location: "https://{host}{uri}".into()
        }
    );
    assert_eq!(
        routes[2].action,
        RouteAction::Respond {
            status: 503,
            body: "<h1>back soon</h1>".into(),
            content_type: "text/html".into()
        }
    );
    assert_eq!(c.services[0].pools().collect::<Vec<_>>(), ["web", "wiki"]);
    // Defaults: a 302 redirect, a 200 text answer.
    let text = http(
        "[[service.route]]\npath_prefix = \"/old\"\nredirect = { location = \"/new{query}\" }\n[[service.route]]\nrespond = {}\n",
    );
    let c = Config::parse(&text, "t.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.services[0].routes[0].action,
        RouteAction::Redirect {
            status: 302,
            location: "/new{query}".into()
        }
    );
    assert_eq!(
        c.services[0].routes[1].action,
        RouteAction::Respond {
            status: 200,
            body: String::new(),
            content_type: "text/plain; charset=utf-8".into()
        }
    );
}

#[test]
fn sni_routes_parse_for_tls_passthrough() {
    let text = tcp(
        "",
        "[[service.route]]\nsni = \"*.Example.org\"\npool = \"wiki\"\n[[service.route]]\nsni = \"a.example.net\"\npool = \"web\"\n",
    );
    let c = Config::parse(&text, "t.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let r = &c.services[0].routes;
    assert_eq!(r[0].sni, Some(NamePattern::Suffix(".example.org".into())));
    assert_eq!(r[1].sni, Some(NamePattern::Exact("a.example.net".into())));
}

#[test]
fn unknown_pools_and_bad_actions_are_located() {
    let text = http(
        r#"
[[service.route]]
host = "a.example.org"
pool = "nope"

[[service.route]]
host = "b.example.org"
redirect = { status = 200 }

[[service.route]]
host = "c.example.org"
redirect = { status = 301, location = "https://{hots}/" }

[[service.route]]
host = "d.example.org"
respond = { status = 99, content_type = "" }

[[service.route]]
host = "e.example.org"

[[service.route]]
host = "f.example.org"
pool = "web"
respond = { status = 503 }
"#,
    );
    let e = errors(&text);
    let at = |needle, n| line(&text, needle, n);
    assert_error(
        &e,
        at("pool = \"nope\"", 0),
        8,
        "service.route.pool",
        "no pool is named \"nope\"",
    );
    assert!(e[0].contains("defined pools: web, wiki"), "{e:?}");
    let red = at("status = 200", 0);
    assert_error(&e, red, 12, "service.route.redirect", "has no location");
    assert_error(
        &e,
        red,
        23,
        "service.route.redirect.status",
        "200 is not a redirect status",
    );
    assert_error(
        &e,
        at("{hots}", 0),
        39,
        "service.route.redirect.location",
        "{hots} is not a placeholder",
    );
    let resp = at("status = 99", 0);
    assert_error(
        &e,
        resp,
        22,
        "service.route.respond.status",
        "99 is not a status",
    );
    assert_error(
        &e,
        resp,
        41,
        "service.route.respond.content_type",
        "is empty",
    );
    let header = |n| at("[[service.route]]", n);
    assert_error(&e, header(4), 1, "service.route", "has no action");
    assert_error(
        &e,
        header(5),
        1,
        "service.route",
        "has more than one action",
    );
    assert_eq!(e.len(), 8, "{e:?}");
}

#[test]
fn bad_conditions_are_located() {
    let text = http(
        r#"
[[service.route]]
host = "b.example.org:80"
pool = "web"
[[service.route]]
host = "*.*.example.org"
pool = "web"
[[service.route]]
path_prefix = "api"
pool = "web"
[[service.route]]
method = []
pool = "web"
[[service.route]]
method = ["GET", "NOT A METHOD"]
pool = "web"
[[service.route]]
header = { name = "X", value = "1", prefix = "2" }
pool = "web"
[[service.route]]
header = { name = "X Y", present = true }
pool = "web"
[[service.route]]
header = { name = "X", present = false }
pool = "web"
[[service.route]]
sni = "a.example.org"
pool = "web"
"#,
    );
    let e = errors(&text);
    let at = |needle| line(&text, needle, 0);
    assert_error(&e, at(":80\""), 8, "service.route.host", "without a port");
    assert_error(
        &e,
        at("*.*."),
        8,
        "service.route.host",
        "is not a host name",
    );
    assert_error(
        &e,
        at("\"api\""),
        15,
        "service.route.path_prefix",
        "does not start with /",
    );
    assert_error(
        &e,
        at("method = []"),
        10,
        "service.route.method",
        "is empty",
    );
    assert_error(
        &e,
        at("NOT A"),
        18,
        "service.route.method",
        "is not a method",
    );
    assert_error(
        &e,
        at("prefix = \"2\""),
        10,
        "service.route.header",
        "exactly one of",
    );
    assert_error(
        &e,
        at("\"X Y\""),
        19,
        "service.route.header.name",
        "is not a header name",
    );
    assert_error(
        &e,
        at("present = false"),
        34,
        "service.route.header.present",
        "present = false",
    );
    assert_error(
        &e,
        at("sni ="),
        7,
        "service.route.sni",
        "applies to mode = \"tcp\"",
    );
    // Unknown keys are the parser's: the first one stops it.
    let e = errors(&http(
        "[[service.route]]\nhost = \"g\"\npool = \"web\"\nweight = 2\n",
    ));
    assert!(
        e.iter()
            .any(|l| l.contains("service.route.weight") && l.contains("unknown field")),
        "{e:?}"
    );
}

#[test]
fn keys_of_the_other_mode_are_refused() {
    // tcp: sni only; passthrough only; every route needs sni.
    let text = tcp(
        "",
        "[[service.route]]\nhost = \"a.example.org\"\nsni = \"a.example.org\"\nredirect = { location = \"/\" }\n[[service.route]]\npool = \"wiki\"\n",
    );
    let e = errors(&text);
    assert_error(
        &e,
        line(&text, "host =", 0),
        8,
        "service.route.host",
        "applies to mode = \"http\"",
    );
    assert_error(
        &e,
        line(&text, "redirect =", 0),
        12,
        "service.route.redirect",
        "applies to mode = \"http\"",
    );
    assert_error(
        &e,
        line(&text, "[[service.route]]", 1),
        1,
        "service.route",
        "a tcp route needs sni",
    );
    let text = tcp(
        "tls = { cert = \"/nonexistent.pem\", key = \"/nonexistent.key\" }\n",
        "[[service.route]]\nsni = \"a.example.org\"\npool = \"wiki\"\n",
    );
    let e = errors(&text);
    assert_error(
        &e,
        line(&text, "sni =", 0),
        7,
        "service.route.sni",
        "this service terminates TLS",
    );
    // A routed pool sticky by cookie needs http, as the service's own would.
    let text = format!(
        "[[pool]]\nname = \"c\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n[pool.sticky]\nkey = \"cookie\"\n{}",
        tcp("", "[[service.route]]\nsni = \"a\"\npool = \"c\"\n")
    );
    let e = errors(&text);
    assert_error(
        &e,
        line(&text, "pool = \"c\"", 0),
        8,
        "service.route.pool",
        "sticky by cookie",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    let text = format!(
        "{POOLS}\n[[service]]\nname = \"k\"\nlisten = [\"192.0.2.10:80\"]\nmode = \"redirect\"\nreturn_path = \"snat\"\npool = \"web\"\n[[service.route]]\nsni = \"a\"\npool = \"web\"\n"
    );
    let e = errors(&text);
    assert_error(
        &e,
        line(&text, "[[service.route]]", 0),
        1,
        "service.route",
        "does not apply to mode = \"redirect\"",
    );
}

#[test]
fn shadowed_routes_are_never_used_and_reported() {
    let text = http(
        r#"
[[service.route]]
host = "*.example.org"
pool = "wiki"
[[service.route]]
host = "a.example.org"
pool = "web"
[[service.route]]
host = "www.example.net"
pool = "web"
[[service.route]]
host = "www.example.net"
method = ["GET"]
pool = "wiki"
[[service.route]]
path_prefix = "/api"
header = { name = "X-V", prefix = "2" }
pool = "web"
[[service.route]]
path_prefix = "/api/v2"
header = { name = "x-v", value = "2.1" }
method = ["POST"]
pool = "wiki"
[[service.route]]
path_prefix = "/api/v2"
header = { name = "x-v", value = "3" }
pool = "wiki"
[[service.route]]
method = ["GET", "POST"]
pool = "web"
[[service.route]]
method = ["POST"]
pool = "wiki"
[[service.route]]
method = ["POST", "PUT"]
pool = "wiki"
"#,
    );
    let e = errors(&text);
    let route = |n| line(&text, "[[service.route]]", n);
    assert_error(
        &e,
        route(1),
        1,
        "service.route",
        "is never used: route 1 of this service",
    );
    assert_error(
        &e,
        route(3),
        1,
        "service.route",
        "is never used: route 3 of this service",
    );
    assert_error(
        &e,
        route(5),
        1,
        "service.route",
        "is never used: route 5 of this service",
    );
    assert_error(
        &e,
        route(8),
        1,
        "service.route",
        "is never used: route 8 of this service",
    );
    // Not shadowed: a.x before *.x, value 3 against prefix 2, PUT not in GET/POST.
    assert_eq!(e.len(), 4, "{e:?}");
    // The order that works is accepted.
    let text = http(
        "[[service.route]]\nhost = \"a.example.org\"\npool = \"web\"\n[[service.route]]\nhost = \"*.example.org\"\npool = \"wiki\"\n[[service.route]]\nrespond = { status = 404 }\n",
    );
    assert!(Config::parse(&text, "t.toml", Path::new(".")).is_ok());
}
