//! Parsing and validation as `tandem check` users see it: every class of error names
//! the right line, column and key; a full configuration parses with its defaults.

use std::path::Path;
use std::time::Duration;

use tandem_config::*;

const BASE: &str = r#"
[[pool]]
name = "web"
backends = [{ address = "127.0.0.1:8001" }]

[[service]]
name = "www"
listen = ["127.0.0.1:8080"]
pool = "web"
"#;

fn errors(text: &str) -> Vec<String> {
    errors_in(text, Path::new("."))
}

fn errors_in(text: &str, dir: &Path) -> Vec<String> {
    match Config::parse(text, "t.toml", dir) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

/// Asserts one error line starts with `t.toml:LINE:COL: KEY: ` and contains `what`.
fn assert_error(errors: &[String], line: usize, col: usize, key: &str, what: &str) {
    let prefix = if key.is_empty() {
        format!("t.toml:{line}:{col}: ")
    } else {
        format!("t.toml:{line}:{col}: {key}: ")
    };
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&prefix) && e.contains(what)),
        "no error {prefix}...{what}... in:\n{}",
        errors.join("\n")
    );
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(BASE, "t.toml", Path::new(".")).unwrap();
    let s = &c.services[0];
    assert_eq!(s.connect_timeout, Duration::from_secs(3));
    assert_eq!(s.idle_timeout, Duration::from_secs(600));
    assert_eq!(s.retries, 2);
    assert_eq!(s.max_conns, 0);
    assert_eq!(s.mode, Mode::Tcp);
    assert_eq!(s.proxy_protocol, ProxyProtocol::None);
    let p = &c.pools[0];
    assert_eq!(p.balance, Balance::RoundRobin);
    assert_eq!(p.backends[0].weight, 1);
    assert!(!p.backends[0].backup);
    assert_eq!(c.global.log_format, LogFormat::Text);
    assert_eq!(c.global.drain_timeout, Duration::from_secs(30));
}

#[test]
fn full_schema_parses() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["cert.pem", "key.pem", "a.pem", "a.key"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    std::fs::write(
        dir.path().join("sync.key"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    let text = r#"
[global]
name = "lb1"
control_socket = "/tmp/t.sock"
admin_listen = "127.0.0.1:9090"
log_format = "json"
drain_timeout = "5s"

[[pool]]
name = "web"
balance = "maglev"
backends = [
  { address = "10.1.0.11:80" },
  { address = "10.1.0.12:80", weight = 2, max_conns = 500 },
  { address = "[2001:db8::1]:80", backup = true },
]
sticky = { key = "cookie", ttl = "30m", cookie = "TANDEMID" }
fallback = "sorry"

[pool.check]
type = "http"
interval = "2s"
timeout = "1s"
rise = 2
fall = 3
path = "/health"
host = "www.example.org"
expect_status = [200, 204]
expect_body = "ok"

[[pool]]
name = "sorry"
backends = [{ address = "10.1.0.99:80" }]
check = { type = "send-expect", send = "EHLO x\r\n", expect = "^220 ", quit = "QUIT\r\n" }

[[service]]
name = "www"
listen = ["0.0.0.0:80", "[::]:80"]
mode = "http"
pool = "web"
connect_timeout = "150ms"
idle_timeout = "5m"
retries = 1
max_conns = 100
proxy_protocol = "v2"
tls = { certs = [{ cert = "cert.pem", key = "key.pem" }, { cert = "a.pem", key = "a.key" }] }

[ha]
interface = "eth0"
vrid = 51
priority = 100
advert_interval = "100ms"
preempt = true
preempt_delay = "2s"
virtual_ips = ["192.0.2.10/24", "192.0.2.11"]
unicast_peers = ["192.0.2.2"]
track_pools = { web = 50 }

[sync]
listen = "10.0.1.1:7946"
peers = ["10.0.1.2:7946"]
key_file = "sync.key"
"#;
    let c = Config::parse(text, "t.toml", dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.global.name, "lb1");
    assert_eq!(
        c.global.admin_listen,
        Some("127.0.0.1:9090".parse().unwrap())
    );
    let web = c.pool("web").unwrap();
    assert_eq!(web.balance, Balance::Maglev);
    assert_eq!(web.backends[1].weight, 2);
    assert_eq!(web.backends[1].max_conns, 500);
    assert!(web.backends[2].backup);
    let sticky = web.sticky.as_ref().unwrap();
    assert_eq!(sticky.key, StickyKey::Cookie);
    assert_eq!(sticky.ttl, Duration::from_secs(1800));
    let check = web.check.as_ref().unwrap();
    assert_eq!(check.kind, CheckKind::Http);
    assert_eq!(check.expect_status, vec![200, 204]);
    assert_eq!(check.initial, InitialHealth::Down);
    let sorry = c.pool("sorry").unwrap();
    assert_eq!(
        sorry.check.as_ref().unwrap().steps,
        vec![Step {
            send: Some("EHLO x\r\n".into()),
            expect: "^220 ".into(),
            starttls: false
        }]
    );
    let www = &c.services[0];
    assert_eq!(www.listen.len(), 2);
    assert_eq!(www.connect_timeout, Duration::from_millis(150));
    assert_eq!(www.proxy_protocol, ProxyProtocol::V2);
    assert_eq!(www.tls.as_ref().unwrap().certs.len(), 2);
    assert_eq!(
        www.tls.as_ref().unwrap().certs[1].cert,
        dir.path().join("a.pem")
    );
    let ha = c.ha.first().unwrap();
    assert_eq!(ha.vrid, 51);
    assert_eq!(ha.advert_interval, Duration::from_millis(100));
    assert_eq!(ha.virtual_ips[1], ("192.0.2.11".parse().unwrap(), 32));
    assert_eq!(ha.track_pools.get("web"), Some(&50));
    assert!(ha.checksum_pseudo_header);
    let sync = c.sync.as_ref().unwrap();
    assert_eq!(sync.peers, vec!["10.0.1.2:7946".parse().unwrap()]);
    assert_eq!(sync.conntrack_port, 3780);
    assert_eq!(sync.conntrackd, std::path::PathBuf::from("conntrackd"));
}

#[test]
fn toml_syntax_error() {
    let e = errors("[[pool]\nname = \"web\"\n");
    assert_error(&e, 1, 8, "", "");
    assert!(e[0].contains("check the TOML syntax"), "{e:?}");
}

#[test]
fn unknown_key_in_table_and_in_inline_table() {
    let e = errors(&BASE.replace("name = \"web\"", "name = \"web\"\nbalanse = \"random\""));
    assert_error(&e, 4, 1, "pool.balanse", "unknown field `balanse`");
    let e = errors(&BASE.replace("\"127.0.0.1:8001\" }", "\"127.0.0.1:8001\", wieght = 2 }"));
    assert_error(&e, 4, 43, "pool.backends.wieght", "unknown field `wieght`");
}

#[test]
fn an_unknown_check_type_names_the_valid_ones_and_where_the_agent_check_goes() {
    let check = |kind: &str| {
        errors(&BASE.replace(
            "name = \"web\"",
            &format!("name = \"web\"\ncheck = {{ type = \"{kind}\" }}"),
        ))
    };
    for typo in ["agnet", "agent"] {
        let e = check(typo);
        assert_error(&e, 4, 18, "pool.check.type", "expected one of `tcp`, `tls`");
        assert!(
            e[0].contains("write `agent = { port = N }` beside `check`"),
            "{e:?}"
        );
    }
    let e = check("htps");
    assert_error(&e, 4, 18, "pool.check.type", "unknown variant `htps`");
    assert!(e[0].contains("did you mean `https`?"), "{e:?}");
    let e = check("ping");
    assert!(e[0].ends_with("(use one of the values listed)"), "{e:?}");
}

#[test]
fn unknown_enum_value() {
    let e = errors(&BASE.replace("name = \"web\"", "name = \"web\"\nbalance = \"rr\""));
    assert_error(&e, 4, 11, "pool.balance", "expected one of `round-robin`");
}

#[test]
fn wrong_type() {
    let e = errors(&BASE.replace("pool = \"web\"", "pool = \"web\"\nretries = \"two\""));
    assert_error(&e, 10, 11, "service.retries", "invalid type");
}

#[test]
fn missing_required_key() {
    let e = errors(&BASE.replace("pool = \"web\"\n", ""));
    assert!(e[0].contains("missing field `pool`"), "{e:?}");
}

#[test]
fn bad_duration() {
    let e = errors(&BASE.replace(
        "pool = \"web\"",
        "pool = \"web\"\nidle_timeout = \"3 parsecs\"",
    ));
    assert_error(&e, 10, 16, "service.idle_timeout", "is not a duration");
}

#[test]
fn duplicate_names() {
    let twice =
        format!("{BASE}\n[[pool]]\nname = \"web\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n");
    let e = errors(&twice);
    assert_error(&e, 12, 8, "pool.name", "already the name of another pool");
    let twice = format!(
        "{BASE}\n[[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:8081\"]\npool = \"web\"\n"
    );
    assert_error(
        &errors(&twice),
        12,
        8,
        "service.name",
        "already the name of another service",
    );
}

#[test]
fn same_listen_address_twice() {
    let twice = format!(
        "{BASE}\n[[service]]\nname = \"other\"\nlisten = [\"127.0.0.1:8080\"]\npool = \"web\"\n"
    );
    assert_error(
        &errors(&twice),
        13,
        11,
        "service.listen",
        "already the address of service \"www\"",
    );
}

#[test]
fn unknown_pool_reference() {
    let e = errors(&BASE.replace("pool = \"web\"", "pool = \"webb\""));
    assert_error(&e, 9, 8, "service.pool", "no pool is named \"webb\"");
    assert!(e[0].contains("defined pools: web"), "{e:?}");
    let e = errors(&BASE.replace("name = \"web\"", "name = \"web\"\nfallback = \"nope\""));
    assert_error(&e, 4, 12, "pool.fallback", "no pool is named \"nope\"");
}

#[test]
fn fallback_cycle() {
    let text = r#"
[[pool]]
name = "a"
backends = [{ address = "127.0.0.1:1" }]
fallback = "b"

[[pool]]
name = "b"
backends = [{ address = "127.0.0.1:2" }]
fallback = "a"

[[service]]
name = "s"
listen = ["127.0.0.1:3"]
pool = "a"
"#;
    let e = errors(text);
    assert_error(&e, 5, 12, "pool.fallback", "cycle: a -> b -> a");
    assert_error(&e, 10, 12, "pool.fallback", "cycle: b -> a -> b");
    let own = errors(&BASE.replace("name = \"web\"", "name = \"web\"\nfallback = \"web\""));
    assert_error(&own, 4, 12, "pool.fallback", "cycle: web -> web");
}

#[test]
fn weight_out_of_range() {
    let e = errors(&BASE.replace("\"127.0.0.1:8001\" }", "\"127.0.0.1:8001\", weight = 0 }"));
    assert_error(&e, 4, 52, "pool.backends.weight", "0 is out of range");
    let e = errors(&BASE.replace(
        "\"127.0.0.1:8001\" }",
        "\"127.0.0.1:8001\", weight = 1000 }",
    ));
    assert_error(&e, 4, 52, "pool.backends.weight", "1000 is out of range");
}

#[test]
fn bad_addresses() {
    let e = errors(&BASE.replace("127.0.0.1:8001", "10.1.0.12"));
    assert_error(
        &e,
        4,
        25,
        "pool.backends.address",
        "is not an IP:port address",
    );
    assert!(e[0].contains("add the port"), "{e:?}");
    let e = errors(&BASE.replace("127.0.0.1:8080", "localhost:http"));
    assert_error(
        &e,
        8,
        11,
        "service.listen",
        "\"localhost:http\" is not an IP:port address",
    );
    let e = errors(&BASE.replace(
        "\"127.0.0.1:8001\" }",
        "\"127.0.0.1:8001\" }, { address = \"127.0.0.1:8001\" }",
    ));
    assert_error(&e, 4, 57, "pool.backends.address", "listed twice");
}

#[test]
fn rise_fall_and_timeout_vs_interval() {
    let text = BASE.replace(
        "backends = [{ address = \"127.0.0.1:8001\" }]\n",
        "backends = [{ address = \"127.0.0.1:8001\" }]\ncheck = { type = \"tcp\", interval = \"1s\", timeout = \"1s\", rise = 0, fall = -1 }\n",
    );
    let e = errors(&text);
    assert_error(
        &e,
        5,
        52,
        "pool.check.timeout",
        "is not shorter than the interval",
    );
    assert_error(&e, 5, 65, "pool.check.rise", "0 is out of range");
    assert_error(&e, 5, 75, "pool.check.fall", "-1 is out of range");
}

#[test]
fn check_keys_of_another_type_and_missing_ones() {
    let text = BASE.replace(
        "backends = [{ address = \"127.0.0.1:8001\" }]\n",
        "backends = [{ address = \"127.0.0.1:8001\" }]\ncheck = { type = \"send-expect\", path = \"/x\" }\n",
    );
    let e = errors(&text);
    assert_error(
        &e,
        5,
        9,
        "pool.check.path",
        "applies to http and https checks",
    );
    assert_error(
        &e,
        5,
        9,
        "pool.check.expect",
        "is required by send-expect checks",
    );
    let text = BASE.replace(
        "backends = [{ address = \"127.0.0.1:8001\" }]\n",
        "backends = [{ address = \"127.0.0.1:8001\" }]\ncheck = { type = \"send-expect\", expect = \"^(220\" }\n",
    );
    assert_error(
        &errors(&text),
        5,
        42,
        "pool.check.expect",
        "is not a valid regex",
    );
}

#[test]
fn tls_files_must_be_readable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
    let text = BASE.replace(
        "pool = \"web\"",
        "pool = \"web\"\nmode = \"http\"\ntls = { cert = \"cert.pem\", key = \"missing.pem\" }",
    );
    let e = errors_in(&text, dir.path());
    assert_error(&e, 11, 34, "service.tls.key", "cannot read");
    assert!(e.len() == 1, "cert.pem is readable, only key fails: {e:?}");
    // A tcp service terminates TLS too; a redirect service cannot.
    let text = BASE.replace(
        "pool = \"web\"",
        "pool = \"web\"\ntls = { cert = \"cert.pem\", key = \"cert.pem\" }",
    );
    let c = Config::parse(&text, "t.toml", dir.path()).unwrap();
    assert_eq!(c.services[0].mode, Mode::Tcp);
    assert_eq!(c.services[0].tls.as_ref().unwrap().certs.len(), 1);
    let text = REDIRECT.replace(
        "mode = \"redirect\"",
        "mode = \"redirect\"\ntls = { cert = \"cert.pem\", key = \"cert.pem\" }",
    );
    assert_error(
        &errors_in(&text, dir.path()),
        11,
        7,
        "service.tls",
        "needs mode = \"tcp\" or \"http\"",
    );
}

#[test]
fn accept_proxy_takes_trusted_sources_in_tcp_and_http_modes() {
    let text = BASE.replace(
        "pool = \"web\"",
        "pool = \"web\"\naccept_proxy = true\naccept_proxy_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"::1/128\"]",
    );
    let c = Config::parse(&text, "t.toml", Path::new(".")).unwrap();
    let s = &c.services[0];
    assert!(s.accept_proxy);
    assert_eq!(
        s.accept_proxy_from,
        vec![
            ("10.0.0.0".parse().unwrap(), 8),
            ("192.0.2.7".parse().unwrap(), 32),
            ("::1".parse().unwrap(), 128),
        ]
    );
    let http = text.replace(
        "accept_proxy = true",
        "mode = \"http\"\naccept_proxy = true",
    );
    assert!(
        Config::parse(&http, "t.toml", Path::new("."))
            .unwrap()
            .services[0]
            .accept_proxy
    );
    assert!(
        !Config::parse(BASE, "t.toml", Path::new("."))
            .unwrap()
            .services[0]
            .accept_proxy
    );
}

#[test]
fn accept_proxy_and_its_sources_go_together() {
    let alone = BASE.replace("pool = \"web\"", "pool = \"web\"\naccept_proxy = true");
    let e = errors(&alone);
    assert_error(
        &e,
        10,
        16,
        "service.accept_proxy",
        "needs accept_proxy_from",
    );
    assert!(
        e[0].contains("accept_proxy_from = [\"10.0.0.0/8\""),
        "a hint: {e:?}"
    );
    let empty = BASE.replace(
        "pool = \"web\"",
        "pool = \"web\"\naccept_proxy = true\naccept_proxy_from = []",
    );
    assert_error(
        &errors(&empty),
        11,
        21,
        "service.accept_proxy_from",
        "is empty",
    );
    let sources_alone = BASE.replace(
        "pool = \"web\"",
        "pool = \"web\"\naccept_proxy_from = [\"10.0.0.1\"]",
    );
    assert_error(
        &errors(&sources_alone),
        10,
        21,
        "service.accept_proxy_from",
        "has no effect without accept_proxy = true",
    );
    let off = sources_alone.replace(
        "accept_proxy_from",
        "accept_proxy = false\naccept_proxy_from",
    );
    assert_error(
        &errors(&off),
        11,
        21,
        "service.accept_proxy_from",
        "has no effect",
    );
    let bad = BASE.replace(
        "pool = \"web\"",
        "pool = \"web\"\naccept_proxy = true\naccept_proxy_from = [\"10.0.0.0/33\", \"balancer\"]",
    );
    let e = errors(&bad);
    assert_error(
        &e,
        11,
        22,
        "service.accept_proxy_from",
        "invalid prefix length",
    );
    assert_error(
        &e,
        11,
        37,
        "service.accept_proxy_from",
        "is not an IP address",
    );
    let redirect = REDIRECT.replace(
        "mode = \"redirect\"",
        "mode = \"redirect\"\naccept_proxy = true\naccept_proxy_from = [\"10.0.0.1\"]",
    );
    assert_error(
        &errors(&redirect),
        11,
        16,
        "service.accept_proxy",
        "does not apply to mode = \"redirect\"",
    );
}

#[test]
fn an_ipv6_router_starts_with_its_link_local_address() {
    let text = format!(
        "{BASE}\n[ha]\ninterface = \"eth0\"\nvrid = 5\nvirtual_ips = [\"fe80::10/64\", \"2001:db8::10\"]\nunicast_peers = [\"fe80::2\"]\n"
    );
    let c = Config::parse(&text, "t.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let ha = c.ha.into_iter().next().unwrap();
    assert_eq!(ha.virtual_ips[0], ("fe80::10".parse().unwrap(), 64));
    assert_eq!(ha.virtual_ips[1], ("2001:db8::10".parse().unwrap(), 128));
    assert_eq!(
        ha.unicast_peers,
        vec!["fe80::2".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[test]
fn a_router_mixing_families_or_without_link_local_first_is_refused() {
    let text = format!(
        "{BASE}\n[ha]\ninterface = \"eth0\"\nvrid = 5\nvirtual_ips = [\"2001:db8::10/64\", \"192.0.2.10/24\", \"fe80::11/64\"]\nunicast_peers = [\"10.0.0.2\"]\n\n[[ha.group]]\ninterface = \"eth1\"\nvirtual_ips = [\"10.1.0.1/24\"]\n"
    );
    let e = errors(&text);
    assert_error(
        &e,
        14,
        16,
        "ha.virtual_ips",
        "2001:db8::10 is not link-local",
    );
    assert_error(
        &e,
        14,
        35,
        "ha.virtual_ips",
        "192.0.2.10 is IPv4, but this router is IPv6",
    );
    assert_error(
        &e,
        14,
        52,
        "ha.virtual_ips",
        "fe80::11 is link-local: only the first",
    );
    assert_error(&e, 15, 18, "ha.unicast_peers", "10.0.0.2 is IPv4");
    assert_error(&e, 19, 16, "ha.group.virtual_ips", "10.1.0.1 is IPv4");
    assert_eq!(e.len(), 5, "{e:?}");
    // An IPv4 router with an IPv6 peer.
    let text = format!(
        "{BASE}\n[ha]\ninterface = \"eth0\"\nvrid = 5\nvirtual_ips = [\"192.0.2.10/24\"]\nunicast_peers = [\"fe80::2\"]\n"
    );
    assert_error(
        &errors(&text),
        15,
        18,
        "ha.unicast_peers",
        "fe80::2 is IPv6, but this router is IPv4",
    );
    // IPv6 adverts come from link-local addresses: a global peer would never match.
    let text = format!(
        "{BASE}\n[ha]\ninterface = \"eth0\"\nvrid = 5\nvirtual_ips = [\"fe80::10/64\"]\nunicast_peers = [\"fe80::2\", \"2001:db8::2\"]\n"
    );
    let e = errors(&text);
    assert_error(
        &e,
        15,
        29,
        "ha.unicast_peers",
        "2001:db8::2 is not link-local",
    );
    assert_eq!(e.len(), 1, "{e:?}");
}

#[test]
fn ha_and_sync_are_validated() {
    let text = format!(
        "{BASE}\n[ha]\ninterface = \"eth0\"\nvrid = 300\nadvert_interval = \"15ms\"\nvirtual_ips = [\"192.0.2.300/24\"]\ntrack_pools = {{ nope = 10 }}\n\n[sync]\nlisten = \"10.0.1.1\"\nkey_file = \"/nonexistent/sync.key\"\n"
    );
    let e = errors(&text);
    assert_error(&e, 13, 8, "ha.vrid", "300 is out of range");
    assert_error(&e, 14, 19, "ha.advert_interval", "is not a VRRPv3 interval");
    assert_error(&e, 15, 16, "ha.virtual_ips", "is not an IP address");
    assert_error(&e, 16, 17, "ha.track_pools", "no pool is named \"nope\"");
    assert_error(&e, 19, 10, "sync.listen", "is not an IP:port address");
    assert_error(&e, 20, 12, "sync.key_file", "cannot read");
}

#[test]
fn every_error_is_reported_at_once() {
    let text = BASE.replace("127.0.0.1:8001", "nowhere").replace(
        "pool = \"web\"",
        "pool = \"none\"\nretries = 1000\nidle_timeout = \"x\"",
    );
    let e = errors(&text);
    assert_eq!(e.len(), 4, "{e:?}");
}

#[test]
fn no_service_is_an_error() {
    let e = errors("[[pool]]\nname = \"web\"\nbackends = [{ address = \"127.0.0.1:8001\" }]\n");
    assert_error(&e, 1, 1, "service", "no [[service]] is defined");
}

const REDIRECT: &str = r#"
[[pool]]
name = "mail"
balance = "source-hash"
backends = [{ address = "10.1.0.11:143" }, { address = "10.1.0.12:143", weight = 2 }]

[[service]]
name = "imap"
listen = ["192.0.2.10:143"]
mode = "redirect"
pool = "mail"

[ha]
interface = "eth0"
vrid = 51
virtual_ips = ["192.0.2.10/24"]

[[ha.group]]
interface = "eth1"
virtual_ips = ["10.1.0.1/24"]
"#;

#[test]
fn redirect_service_with_its_gateway_address_is_accepted() {
    let c = Config::parse(REDIRECT, "t.toml", Path::new(".")).unwrap();
    assert!(c.has_redirect());
    assert_eq!(c.services[0].return_path, ReturnPath::Vip);
    let group = &c.ha.first().unwrap().group;
    assert_eq!(group[0].interface, "eth1");
    assert_eq!(
        group[0].virtual_ips,
        vec![("10.1.0.1".parse().unwrap(), 24)]
    );
}

#[test]
fn redirect_service_without_a_return_path_is_refused() {
    let without_group = REDIRECT.split("[[ha.group]]").next().unwrap();
    let e = errors(without_group);
    assert_error(&e, 10, 8, "service.return_path", "no [[ha.group]]");
    assert!(e[0].contains("return_path = \"snat\""), "{e:?}");
    let snat = without_group.replace(
        "mode = \"redirect\"",
        "mode = \"redirect\"\nreturn_path = \"snat\"",
    );
    let c = Config::parse(&snat, "t.toml", Path::new(".")).unwrap();
    assert_eq!(c.services[0].return_path, ReturnPath::Snat);
}

#[test]
fn redirect_refuses_what_the_kernel_cannot_do() {
    let text = REDIRECT
        .replace("balance = \"source-hash\"", "balance = \"least-conn\"")
        .replace(
            "listen = [\"192.0.2.10:143\"]",
            "listen = [\"0.0.0.0:143\", \"[2001:db8::10]:143\"]",
        )
        .replace(
            "pool = \"mail\"\n\n[ha]",
            "pool = \"mail\"\nproxy_protocol = \"v2\"\n\n[ha]",
        );
    let e = errors(&text);
    assert_error(&e, 9, 11, "service.listen", "names no single address");
    assert_error(&e, 9, 26, "service.listen", "different IP families");
    assert_error(
        &e,
        11,
        8,
        "service.pool",
        "least-conn, which the kernel cannot do",
    );
    assert_error(
        &e,
        12,
        18,
        "service.proxy_protocol",
        "cannot be sent by kernel forwarding",
    );
    let sticky = REDIRECT.replace(
        "balance = \"source-hash\"",
        "balance = \"round-robin\"\nsticky = { key = \"source-ip\", ttl = \"30m\" }",
    );
    let e = errors(&sticky);
    assert_error(&e, 12, 8, "service.pool", "sticky table");
    let tcp_with_return_path = BASE.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nreturn_path = \"snat\"\n",
    );
    let e = errors(&tcp_with_return_path);
    assert_error(
        &e,
        10,
        15,
        "service.return_path",
        "applies to mode = \"redirect\" only",
    );
}

#[test]
fn inputs_the_fuzzer_found_give_errors_not_panics() {
    // A byte-order mark and a span inside a multi-byte character once panicked.
    let text =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-config-crash-1.toml"))
            .unwrap();
    let text = String::from_utf8(text).unwrap();
    let e = errors(&text);
    assert!(e.iter().all(|l| l.starts_with("t.toml:")), "{e:?}");
}

#[test]
fn header_rules_cannot_touch_message_framing() {
    let text = format!(
        "{BASE}mode = \"http\"\n[service.http]\nresponse_headers = {{ remove = [\"Content-Length\"], set = {{ \"X-Ok\" = \"1\" }} }}\nrequest_headers = {{ add = {{ \"Transfer-Encoding\" = \"chunked\" }} }}\n"
    );
    let e = errors(&text);
    let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_error(
        &e,
        line("response_headers"),
        32,
        "service.http.response_headers",
        "Content-Length frames the message",
    );
    assert_error(
        &e,
        line("request_headers"),
        29,
        "service.http.request_headers",
        "Transfer-Encoding frames the message",
    );
    assert_eq!(e.len(), 2, "{e:?}");
}

const MAIL: &str = r#"
[[pool]]
name = "smtp"
backends = [{ address = "127.0.0.1:25" }]
[pool.check]
type = "send-expect"
expect = [
  { expect = "^220 " },
  { send = "EHLO tandem.check\r\n", expect = "^250 " },
  { send = "STARTTLS\r\n", expect = "^220 ", starttls = true },
  { send = "EHLO tandem.check\r\n", expect = "^250 " },
]
quit = "QUIT\r\n"
warn_expiry = "14d"
host = "mx.example.org"

[[service]]
name = "smtp"
listen = ["127.0.0.1:2525"]
pool = "smtp"
proxy_protocol = "v2"
"#;

#[test]
fn multi_step_starttls_checks_parse_and_send_the_services_proxy_header() {
    let c = Config::parse(MAIL, "t.toml", Path::new(".")).unwrap();
    let check = c.pools[0].check.as_ref().unwrap();
    assert_eq!(check.steps.len(), 4);
    assert_eq!(
        check.steps[1].send.as_deref(),
        Some("EHLO tandem.check\r\n")
    );
    assert!(check.steps[2].starttls && !check.steps[3].starttls);
    assert!(check.uses_tls());
    assert_eq!(check.warn_expiry, Some(Duration::from_secs(14 * 86_400)));
    assert_eq!(check.send_proxy, ProxyProtocol::V2);
    assert!(c.warnings.is_empty());
    // send_proxy = false turns it off; v1 services give v1 checks.
    let off = MAIL.replace("quit =", "send_proxy = false\nquit =");
    let c = Config::parse(&off, "t.toml", Path::new(".")).unwrap();
    assert_eq!(
        c.pools[0].check.as_ref().unwrap().send_proxy,
        ProxyProtocol::None
    );
    let v1 = MAIL.replace("\"v2\"", "\"v1\"");
    let c = Config::parse(&v1, "t.toml", Path::new(".")).unwrap();
    assert_eq!(
        c.pools[0].check.as_ref().unwrap().send_proxy,
        ProxyProtocol::V1
    );
}

#[test]
fn a_pool_behind_services_that_disagree_on_proxy_is_warned_about() {
    let text = format!(
        "{MAIL}\n[[service]]\nname = \"submission\"\nlisten = [\"127.0.0.1:2587\"]\npool = \"smtp\"\n"
    );
    let c = Config::parse(&text, "t.toml", Path::new(".")).unwrap();
    assert_eq!(
        c.pools[0].check.as_ref().unwrap().send_proxy,
        ProxyProtocol::V2
    );
    let lines: Vec<String> = c
        .warnings
        .iter()
        .map(|w| w.render("t.toml", "warning: "))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("t.toml:5:1: warning: pool.check: pool \"smtp\" is used by services that send different PROXY headers (smtp sends PROXY v2, submission sends no PROXY header); its checks send PROXY v2"),
        "{}",
        lines[0]
    );
    // A fallback pool serves its services too.
    let fallback = BASE.replace("name = \"web\"\n", "name = \"web\"\nfallback = \"sorry\"\n")
        + "[[pool]]\nname = \"sorry\"\nbackends = [{ address = \"127.0.0.1:9\" }]\ncheck = { type = \"tcp\", send_proxy = true }\n";
    let errs = errors(&fallback);
    assert_error(
        &errs,
        14,
        38,
        "pool.check.send_proxy",
        "no service of pool \"sorry\" sends a PROXY header",
    );
    let sent = fallback.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nproxy_protocol = \"v1\"\n",
    );
    let c = Config::parse(&sent, "t.toml", Path::new(".")).unwrap();
    assert_eq!(
        c.pool("sorry").unwrap().check.as_ref().unwrap().send_proxy,
        ProxyProtocol::V1
    );
}

#[test]
fn bad_steps_are_located_and_explained() {
    let bad = MAIL.replace("starttls = true }", "starttls = true, tls = 1 }");
    assert_error(
        &errors(&bad),
        7,
        10,
        "pool.check.expect",
        "step 3: unknown field `tls`",
    );
    let bad = MAIL.replace(
        "\"^250 \" },\n  { send = \"STARTTLS",
        "\"^250 (\" },\n  { send = \"STARTTLS",
    );
    assert_error(
        &errors(&bad),
        7,
        10,
        "pool.check.expect",
        "step 2: \"^250 (\" is not a valid regex",
    );
    let bad = MAIL.replace(
        "\"^250 \" },\n  { send = \"STARTTLS",
        "\"^250 \", starttls = true },\n  { send = \"STARTTLS",
    );
    assert_error(
        &errors(&bad),
        7,
        10,
        "pool.check.expect",
        "starttls = true on more than one step",
    );
    let bad = MAIL.replace(
        "type = \"send-expect\"",
        "type = \"send-expect\"\nsend = \"x\"",
    );
    assert_error(
        &errors(&bad),
        7,
        8,
        "pool.check.send",
        "cannot be used with a list of steps",
    );
    let bad = MAIL.replace("[\n  { expect = \"^220 \" },", "[");
    assert!(
        Config::parse(&bad, "t.toml", Path::new(".")).is_ok(),
        "a conversation may start by sending"
    );
    let bad = MAIL
        .replace("expect = [", "expect = 5 #[")
        .replace("  { expect", "#")
        .replace("  { send", "#")
        .replace("]\nquit", "quit");
    assert_error(
        &errors(&bad),
        7,
        10,
        "pool.check.expect",
        "is a integer, not a regex or a list of steps",
    );
    // TLS keys need a conversation that speaks TLS.
    let plain = MAIL.replace(", starttls = true", "");
    assert_error(
        &errors(&plain),
        14,
        15,
        "pool.check.warn_expiry",
        "applies to checks that speak TLS",
    );
    assert_error(
        &errors(&plain),
        15,
        8,
        "pool.check.host",
        "applies to http checks (Host) and TLS checks",
    );
    let script = BASE.replace(
        "backends = [{ address = \"127.0.0.1:8001\" }]",
        "backends = [{ address = \"127.0.0.1:8001\" }]\ncheck = { type = \"script\", command = \"/bin/true\", send_proxy = true }",
    );
    assert_error(
        &errors(&script),
        5,
        64,
        "pool.check.send_proxy",
        "not script checks",
    );
}

#[test]
fn admin_actions_are_off_by_default_and_loopback_only_when_on() {
    let c = Config::parse(BASE, "t.toml", Path::new(".")).unwrap();
    assert!(!c.global.admin_write);
    let lo: Vec<String> = c
        .global
        .admin_allow
        .iter()
        .map(|(ip, len)| format!("{ip}/{len}"))
        .collect();
    assert_eq!(lo, ["127.0.0.0/8", "::1/128"]);

    let on = format!(
        "[global]\nadmin_listen = \"127.0.0.1:9100\"\nadmin_write = true\nadmin_allow = [\"10.9.0.0/24\", \"2001:db8::7\"]\n{BASE}"
    );
    let c = Config::parse(&on, "t.toml", Path::new(".")).unwrap();
    assert!(c.global.admin_write && c.warnings.is_empty());
    assert_eq!(c.global.admin_allow.len(), 2);
    assert_eq!(c.global.admin_allow[1].1, 128);

    let bad = on.replace("\"2001:db8::7\"", "\"10.9.0.300\"");
    assert_error(&errors(&bad), 4, 31, "global.admin_allow", "10.9.0.300");

    let nobody = on.replace("[\"10.9.0.0/24\", \"2001:db8::7\"]", "[]");
    let c = Config::parse(&nobody, "t.toml", Path::new(".")).unwrap();
    let w: Vec<String> = c
        .warnings
        .iter()
        .map(|w| w.render("t.toml", "warning: "))
        .collect();
    assert_eq!(
        w,
        [
            "t.toml:3:15: warning: global.admin_write: is on but global.admin_allow is empty: no client may act"
        ]
    );
    let no_port = on.replace("admin_listen = \"127.0.0.1:9100\"\n", "");
    let c = Config::parse(&no_port, "t.toml", Path::new(".")).unwrap();
    assert!(
        c.warnings[0]
            .render("t.toml", "")
            .contains("has no effect without global.admin_listen")
    );
}

#[test]
fn an_agent_check_comes_beside_the_health_check_with_its_defaults() {
    let text = BASE.replace(
        "backends = [{ address = \"127.0.0.1:8001\" }]\n",
        "backends = [{ address = \"127.0.0.1:8001\" }]\ncheck = { type = \"tcp\" }\nagent = { port = 9777 }\n",
    );
    let c = Config::parse(&text, "t.toml", Path::new(".")).unwrap();
    let p = &c.pools[0];
    assert_eq!(p.check.as_ref().unwrap().kind, CheckKind::Tcp);
    assert_eq!(
        p.agent,
        Some(AgentCheck {
            port: 9777,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            send: None,
        })
    );
    let table = BASE.replace(
        "backends = [{ address = \"127.0.0.1:8001\" }]\n",
        "backends = [{ address = \"127.0.0.1:8001\" }]\n\n[pool.agent]\nport = 9777\ninterval = \"500ms\"\ntimeout = \"200ms\"\nsend = \"status\\n\"\n",
    );
    let a = Config::parse(&table, "t.toml", Path::new("."))
        .unwrap()
        .pools[0]
        .agent
        .clone()
        .unwrap();
    assert_eq!(a.interval, Duration::from_millis(500));
    assert_eq!(a.send.as_deref(), Some("status\n"));
}

#[test]
fn agent_errors_name_their_position() {
    let text = BASE.replace(
        "backends = [{ address = \"127.0.0.1:8001\" }]\n",
        "backends = [{ address = \"127.0.0.1:8001\" }]\nagent = { port = 70000, interval = \"1s\", timeout = \"2s\" }\n",
    );
    let e = errors(&text);
    assert_error(&e, 5, 18, "pool.agent.port", "70000 is not a TCP port");
    assert_error(
        &e,
        5,
        52,
        "pool.agent.timeout",
        "is not shorter than the interval",
    );
    let missing = BASE.replace(
        "backends = [{ address = \"127.0.0.1:8001\" }]\n",
        "backends = [{ address = \"127.0.0.1:8001\" }]\nagent = { interval = \"1s\" }\n",
    );
    let e = errors(&missing);
    assert!(e.iter().any(|l| l.contains("port")), "{e:?}");
}
