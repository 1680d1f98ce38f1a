//! `tls.acme` and `http.hsts` as `tandem check` users see them: what parses, and every
//! mistake named by line, column and key.

use std::path::Path;

use tandem_config::*;

fn service(global: &str, mode: &str, tls: &str, http: &str) -> String {
    format!(
        "[global]\n{global}\n[[pool]]\nname = \"web\"\nbackends = [{{ address = \"127.0.0.1:8001\" }}]\n\n\
[[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:8443\"]\nmode = \"{mode}\"\npool = \"web\"\n{tls}\n{http}"
    )
}

const STATE: &str = "state_dir = \"/tmp\"";

fn errors(text: &str) -> Vec<String> {
    match Config::parse(text, "t.toml", Path::new(".")) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

/// The 1-based line and column where `needle` starts.
fn at(text: &str, needle: &str) -> (usize, usize) {
    let (i, l) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?}"));
    (i + 1, l.find(needle).unwrap() + 1)
}

fn assert_error(errors: &[String], (line, col): (usize, usize), key: &str, what: &str) {
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
fn acme_parses_with_its_defaults() {
    let text = service(
        STATE,
        "http",
        "[service.tls.acme]\ndirectory = \"https://ca.test/dir\"\ncontact = [\"mailto:ops@example.org\"]\ndomains = [\"WWW.Example.org.\", \"example.org\"]",
        "[service.http]\nhsts = \"365d\"",
    );
    let config = Config::parse(&text, "t.toml", Path::new(".")).unwrap();
    let tls = config.services[0].tls.as_ref().unwrap();
    assert!(tls.certs.is_empty());
    let acme = tls.acme.as_ref().unwrap();
    assert_eq!(acme.domains, ["www.example.org", "example.org"]);
    assert_eq!(acme.challenge, AcmeChallenge::Http01);
    assert_eq!(acme.ca_file, Path::new(DEFAULT_ACME_CA_FILE));
    let http = &config.services[0].http;
    assert_eq!(http.hsts.as_deref(), Some("max-age=31536000"));
    assert!(http.response_headers.set.contains(&(
        "strict-transport-security".into(),
        "max-age=31536000".into()
    )));
}

#[test]
fn acme_mistakes_are_named_by_line_and_column() {
    let text = service(
        "",
        "http",
        "[service.tls.acme]\ndirectory = \"http://ca.test/dir\"\ncontact = [\"ops@example.org\"]\ndomains = [\"*.example.org\", \"a.example.org\", \"a.example.org\"]\nchallenge = \"dns-01\"",
        "",
    );
    let e = errors(&text);
    assert_error(
        &e,
        at(&text, "\"http://"),
        "service.tls.acme.directory",
        "not an https URL",
    );
    assert_error(
        &e,
        at(&text, "\"ops@"),
        "service.tls.acme.contact",
        "not a mailto: URL",
    );
    assert_error(
        &e,
        at(&text, "\"*.example"),
        "service.tls.acme.domains",
        "not a DNS name",
    );
    let second = {
        let (l, _) = at(&text, "\"*.example");
        let line = text.lines().nth(l - 1).unwrap();
        (l, line.rfind("\"a.example").unwrap() + 1)
    };
    assert_error(&e, second, "service.tls.acme.domains", "listed twice");
    assert_error(
        &e,
        at(&text, "\"dns-01\""),
        "service.tls.acme.challenge",
        "tls-alpn-01",
    );
    // No state_dir: named at the acme table's header.
    assert_error(
        &e,
        at(&text, "[service.tls.acme]"),
        "service.tls.acme",
        "needs global.state_dir",
    );
}

#[test]
fn acme_needs_http_mode_and_hsts_needs_tls() {
    let text = service(
        STATE,
        "tcp",
        "[service.tls.acme]\ndirectory = \"https://ca.test/dir\"\ndomains = [\"a.example.org\"]",
        "",
    );
    let e = errors(&text);
    assert_error(
        &e,
        at(&text, "[service.tls.acme]"),
        "service.tls.acme",
        "http services",
    );

    let text = service(STATE, "http", "", "[service.http]\nhsts = \"max-age=600\"");
    let e = errors(&text);
    assert_error(&e, at(&text, "\"max-age"), "service.http.hsts", "no tls");

    let text = service(
        STATE,
        "http",
        "[service.tls.acme]\ndirectory = \"https://ca.test/dir\"\ndomains = [\"a.example.org\"]",
        "[service.http]\nhsts = \"max-age=6x0; preload\"",
    );
    let e = errors(&text);
    assert_error(
        &e,
        at(&text, "\"max-age"),
        "service.http.hsts",
        "not a Strict-Transport-Security value",
    );
}

#[test]
fn route_hsts_parses_and_needs_tls_and_a_pool() {
    let tls =
        "[service.tls.acme]\ndirectory = \"https://ca.test/dir\"\ndomains = [\"a.example.org\"]";
    let routes = "[[service.route]]\npath_prefix = \"/a/\"\npool = \"web\"\nhsts = \"2h\"\n\n\
[[service.route]]\npath_prefix = \"/b/\"\npool = \"web\"\nhsts = \"max-age=60; includeSubDomains\"\n\n\
[[service.route]]\npath_prefix = \"/c/\"\npool = \"web\"\n";
    let text = service(STATE, "http", tls, routes);
    let config = Config::parse(&text, "t.toml", Path::new(".")).unwrap();
    let hsts: Vec<_> = config.services[0]
        .routes
        .iter()
        .map(|r| r.hsts.as_deref())
        .collect();
    assert_eq!(
        hsts,
        [
            Some("max-age=7200"),
            Some("max-age=60; includeSubDomains"),
            None
        ]
    );

    let text = service(
        STATE,
        "http",
        "",
        "[[service.route]]\npool = \"web\"\nhsts = \"1d\"",
    );
    assert_error(
        &errors(&text),
        at(&text, "\"1d\""),
        "service.route.hsts",
        "no tls",
    );
    let text = service(
        STATE,
        "http",
        tls,
        "[[service.route]]\npath_prefix = \"/x\"\nhsts = \"max-age=1x\"\n[service.route.respond]\nstatus = 503\n",
    );
    let e = errors(&text);
    assert_error(
        &e,
        at(&text, "\"max-age=1x\""),
        "service.route.hsts",
        "not a Strict-Transport-Security value",
    );
    assert_error(
        &e,
        at(&text, "\"max-age=1x\""),
        "service.route.hsts",
        "answers itself",
    );
    let text = service(
        STATE,
        "tcp",
        "",
        "[[service.route]]\nsni = \"a.test\"\npool = \"web\"\nhsts = \"1d\"",
    );
    assert_error(
        &errors(&text),
        at(&text, "\"1d\""),
        "service.route.hsts",
        "applies to mode = \"http\"",
    );
}
