//! Several VRRP instances (`[[ha.instance]]`) and the key paths of errors inside
//! arrays of tables, as `tandem check` users see them.

use std::path::Path;
use std::time::Duration;

use tandem_config::*;

// Lines 1..=9; `[service.http]` is a table of the last `[[service]]`.
const BASE: &str = r#"[[pool]]
name = "web"
backends = [{ address = "127.0.0.1:8001" }]

[[service]]
name = "www"
listen = ["127.0.0.1:8080"]
pool = "web"
mode = "http"
"#;

fn parse(text: &str) -> Result<Config, Vec<String>> {
    Config::parse(text, "t.toml", Path::new("."))
        .map_err(|e| e.to_string().lines().map(str::to_string).collect())
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e,
    }
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

const TWO: &str = r#"
[ha]

[[ha.instance]]
interface = "eth0"
vrid = 51
priority = 200
advert_interval = "100ms"
virtual_ips = ["192.0.2.10/24"]
garp_refresh = "30s"

[[ha.instance]]
interface = "eth0"
vrid = 52
priority = 100
preempt_delay = "2s"
virtual_ips = ["192.0.2.11/24"]
track_pools = { web = 50 }

[[ha.instance.group]]
interface = "eth1"
virtual_ips = ["10.1.0.1/24"]
"#;

#[test]
fn instances_are_read_in_file_order_with_their_own_keys() {
    let c = parse(&format!("{BASE}{TWO}")).unwrap_or_else(|e| panic!("{}", e.join("\n")));
    assert_eq!(c.ha.len(), 2);
    let (a, b) = (&c.ha[0], &c.ha[1]);
    assert_eq!((a.vrid, a.priority), (51, 200));
    assert_eq!(a.advert_interval, Duration::from_millis(100));
    assert_eq!(a.garp_refresh, Some(Duration::from_secs(30)));
    assert!(a.group.is_empty());
    assert_eq!((b.vrid, b.priority), (52, 100));
    assert_eq!(b.advert_interval, Duration::from_secs(1), "the default");
    assert_eq!(b.preempt_delay, Duration::from_secs(2));
    assert_eq!(b.garp_refresh, None, "off by default");
    assert_eq!(b.track_pools.get("web"), Some(&50));
    assert_eq!(
        b.group.len(),
        1,
        "[[ha.instance.group]] belongs to the last instance"
    );
    let ip = "10.1.0.1".parse().unwrap();
    assert!(
        b.holds(ip) && !a.holds(ip),
        "group addresses belong to their instance"
    );
}

#[test]
fn a_plain_ha_table_stays_one_instance() {
    let c = parse(&format!(
        "{BASE}\n[ha]\ninterface = \"eth0\"\nvrid = 51\nvirtual_ips = [\"192.0.2.10/24\"]\n"
    ))
    .unwrap_or_else(|e| panic!("{}", e.join("\n")));
    assert_eq!(c.ha.len(), 1);
    assert_eq!(c.ha[0].vrid, 51);
    assert_eq!(c.ha[0].garp_refresh, None);
}

#[test]
fn keys_beside_instances_are_refused_where_they_are() {
    // Line 11 is `[ha]`, 12 the stray key.
    let text = format!(
        "{BASE}\n[ha]\npriority = 150\n\n[[ha.instance]]\ninterface = \"eth0\"\nvrid = 51\nvirtual_ips = [\"192.0.2.10/24\"]\n"
    );
    let e = errors(&text);
    assert_error(&e, 12, 12, "ha.priority", "beside [[ha.instance]]");
}

#[test]
fn instances_must_not_share_a_vrid_on_an_interface_nor_an_address() {
    let text = format!(
        "{BASE}{}",
        TWO.replace("vrid = 52", "vrid = 51")
            .replace("\"10.1.0.1/24\"", "\"192.0.2.10/24\"")
    );
    let e = errors(&text);
    // TWO starts on line 10 (its leading newline): vrid of the second instance is line 23.
    assert_error(
        &e,
        23,
        8,
        "ha.instance.vrid",
        "vrid 51 is used twice on eth0",
    );
    assert_error(
        &e,
        31,
        16,
        "ha.instance.group.virtual_ips",
        "192.0.2.10 belongs to another instance already",
    );
    // The same vrid on another interface is another router.
    let other = TWO.replace("vrid = 52", "vrid = 51").replacen(
        "interface = \"eth0\"\nvrid = 51\npriority = 100",
        "interface = \"eth2\"\nvrid = 51\npriority = 100",
        1,
    );
    parse(&format!("{BASE}{other}")).unwrap_or_else(|e| panic!("{}", e.join("\n")));
}

#[test]
fn an_instance_missing_a_required_key_is_named() {
    let text = format!(
        "{BASE}\n[[ha.instance]]\ninterface = \"eth0\"\nvirtual_ips = [\"192.0.2.10/24\"]\n"
    );
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|l| l.starts_with("t.toml:11:")
                && l.contains("ha.instance.vrid: missing field `vrid`")),
        "{e:?}"
    );
    assert_eq!(e.len(), 1, "only what is missing: {e:?}");
    let e = errors(&format!("{BASE}\n[ha]\npriority = 120\n"));
    for key in ["interface", "vrid", "virtual_ips"] {
        assert!(
            e.iter().any(|l| l.starts_with("t.toml:11:1: ")
                && l.contains(&format!("ha.{key}: missing field `{key}`"))),
            "{e:?}"
        );
    }
    assert_eq!(e.len(), 3, "{e:?}");
}

#[test]
fn instance_values_are_checked_with_their_instance_key() {
    let text = format!(
        "{BASE}{}",
        TWO.replace("vrid = 52", "vrid = 300")
            .replace("garp_refresh = \"30s\"", "garp_refresh = \"200ms\"")
    );
    let e = errors(&text);
    assert_error(&e, 19, 16, "ha.instance.garp_refresh", "too short");
    assert_error(&e, 23, 8, "ha.instance.vrid", "300 is out of range");
}

/// Point 5 of issue 18: an unknown key in an array-of-tables entry that follows a
/// sub-table of another section names its own table, at its own line and column.
#[test]
fn unknown_keys_in_arrays_of_tables_name_their_table() {
    let text = format!(
        "{BASE}\n[service.http]\nvia = true\n\n[[ha.instance]]\ninterface = \"eth0\"\nvrid = 51\nvirtual_ips = [\"192.0.2.10/24\"]\npriorty = 100\n"
    );
    let e = errors(&text);
    assert_error(&e, 18, 1, "ha.instance.priorty", "unknown field `priorty`");

    let pool = format!(
        "{BASE}\n[service.http]\nvia = true\n\n[[pool]]\nname = \"b\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\nbalanse = \"random\"\n"
    );
    assert_error(
        &errors(&pool),
        17,
        1,
        "pool.balanse",
        "unknown field `balanse`",
    );

    let service = format!(
        "{BASE}\n[service.http]\nvia = true\n\n[[service]]\nname = \"b\"\nlisten = [\"127.0.0.1:9\"]\npool = \"web\"\nlissten = 1\n"
    );
    assert_error(
        &errors(&service),
        18,
        1,
        "service.lissten",
        "unknown field `lissten`",
    );

    let route = format!(
        "{BASE}\n[service.http]\nvia = true\n\n[[service.route]]\npath_prefix = \"/a\"\npool = \"web\"\npth = \"/b\"\n"
    );
    assert_error(
        &errors(&route),
        17,
        1,
        "service.route.pth",
        "unknown field `pth`",
    );

    // The span is in a header: the path is that header's, not the section above it.
    let after_http = format!("{BASE}\n[service.http]\nvia = true\n\n");
    // Line 14 is the next header.
    let e = errors(&format!("{after_http}[[service.rout]]\npool = \"web\"\n"));
    assert_error(&e, 14, 11, "service.rout", "unknown field `rout`");
    let e = errors(&format!(
        "{after_http}[[pool]]\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n"
    ));
    assert_error(&e, 14, 1, "pool.name", "missing field `name`");
    let e = errors(&format!(
        "{after_http}[[ha.instance]]   # A\ninterface = \"eth0\"\nvrid = 51\nvirtual_ips = [\"192.0.2.10/24\"]\n\n[[ha.instance.grop]]\ninterface = \"x\"\n"
    ));
    assert_error(&e, 19, 15, "ha.instance.grop", "unknown field `grop`");
    let e = errors(&format!(
        "{after_http}[[service.route]]\npool = \"web\"\n\n[service.route.hedaer]\nname = \"x\"\n"
    ));
    assert_error(&e, 17, 16, "service.route.hedaer", "unknown field `hedaer`");
    let e = errors(&format!("{after_http}[hx]\na = 1\n"));
    assert_error(&e, 14, 2, "hx", "unknown field `hx`");
    // A header with a comment after it names its table.
    let e = errors(&format!(
        "{after_http}[[ha.instance]]   # A\ninterface = \"eth0\"\nvrid = 51\nvirtual_ips = [\"192.0.2.10/24\"]\nvrdi = 5\n"
    ));
    assert_error(&e, 18, 1, "ha.instance.vrdi", "unknown field `vrdi`");

    let group = format!(
        "{BASE}\n[ha]\ninterface = \"eth0\"\nvrid = 51\nvirtual_ips = [\"192.0.2.10/24\"]\n\n[[ha.group]]\ninterface = \"eth1\"\nvirtual_ips = [\"10.1.0.1/24\"]\nvips = 1\n"
    );
    assert_error(
        &errors(&group),
        19,
        1,
        "ha.group.vips",
        "unknown field `vips`",
    );
}
