//! docs/configuration.md and the code agree on every default: for each key whose
//! documented default is a literal (`"30s"`, `2`, `false`, `"round-robin"`), writing
//! that value into a configuration gives the same [`Config`] as leaving the key out.

use std::path::Path;

use tandem_config::Config;

/// A configuration with every section, each holding only what it requires. `@S@`
/// marks where a key of section S goes (`@backends@` inside an inline table).
const TEMPLATE: &str = r#"
[global]
@global@

[[pool]]
name = "kernel"
backends = [{ address = "10.1.0.11:25" }]

[[pool]]
name = "web"
backends = [{ address = "127.0.0.1:8001" @backends@ }]
@pool@

[pool.sticky]
key = "source-ip"
@sticky@

[pool.check]
type = "https"
@check@

[pool.agent]
port = 9777
@agent@

[[service]]
name = "www"
listen = ["127.0.0.1:8080"]
pool = "web"
@service@

[[service]]
name = "web"
listen = ["127.0.0.1:8081"]
mode = "http"
pool = "web"

[service.http]
@http@

[[service]]
name = "kernel"
listen = ["192.0.2.10:25"]
mode = "redirect"
pool = "kernel"
@redirect@

[ha]
interface = "eth0"
vrid = 51
virtual_ips = ["192.0.2.10/24"]
@ha@

[[ha.group]]
interface = "eth1"
virtual_ips = ["10.1.0.1/24"]
@ha.group@

[sync]
listen = "10.0.0.1:7000"
key_file = "sync.key"
@sync@

[[service]]
name = "anycast"
listen = ["198.51.100.10:80"]
pool = "web"

[announce]
addresses = ["198.51.100.10"]
@announce@
"#;

/// The section of the reference each heading opens, as the template's markers name it.
fn section(heading: &str) -> Option<&'static str> {
    let sections = [
        ("## `[global]`", "global"),
        ("## `[[pool]]`", "pool"),
        ("### Backends", "backends"),
        ("### `sticky`", "sticky"),
        ("### `check`", "check"),
        ("### `agent`", "agent"),
        ("## `[[service]]`", "service"),
        ("### HTTP mode", "http"),
        ("### Redirect mode", "redirect"),
        ("## `[ha]`", "ha"),
        ("### `[[ha.group]]`", "ha.group"),
        ("## `[sync]`", "sync"),
        ("## `[announce]`", "announce"),
    ];
    sections
        .iter()
        .find(|(start, _)| heading.starts_with(start))
        .map(|(_, name)| *name)
}

/// The text between the first pair of backticks of `cell`, when the cell starts with one.
fn literal(cell: &str) -> Option<&str> {
    let rest = cell.trim().strip_prefix('`')?;
    rest.split('`').next()
}

/// Every `(section, key, literal default)` of the reference's key tables.
fn documented_defaults(text: &str) -> Vec<(&'static str, String, String)> {
    let mut found = Vec::new();
    let mut current = None;
    let mut in_key_table = false;
    for line in text.lines() {
        if line.starts_with('#') {
            current = section(line);
            continue;
        }
        if !line.starts_with('|') {
            in_key_table = false;
            continue;
        }
        if line.starts_with("| key | default |") {
            in_key_table = true;
            continue;
        }
        let cells: Vec<&str> = line.split('|').collect();
        // | `key` | default | meaning |: a leading empty cell, then three.
        let (Some(section), true, [_, key, default, _, ..]) =
            (current, in_key_table, cells.as_slice())
        else {
            continue;
        };
        let (Some(key), Some(value)) = (literal(key), literal(default)) else {
            continue;
        };
        found.push((section, key.to_string(), value.to_string()));
    }
    found
}

fn config(dir: &Path, key: Option<(&str, &str, &str)>) -> Config {
    let mut text = TEMPLATE.to_string();
    if let Some((section, key, value)) = key {
        let marker = format!("@{section}@");
        let line = if section == "backends" {
            format!(", {key} = {value}")
        } else {
            format!("{key} = {value}")
        };
        assert!(
            text.contains(&marker),
            "no section {section} in the template"
        );
        text = text.replace(&marker, &line);
    }
    for marker in TEMPLATE.split('@').skip(1).step_by(2) {
        text = text.replace(&format!("@{marker}@"), "");
    }
    match Config::parse(&text, "t.toml", dir) {
        Ok(c) => c,
        Err(e) => panic!("{key:?}: the configuration is refused:\n{e}\n{text}"),
    }
}

#[test]
fn documented_defaults_are_the_codes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sync.key"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    let reference = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    let defaults = documented_defaults(&reference);
    assert!(defaults.len() > 40, "{} defaults found", defaults.len());
    let plain = config(dir.path(), None);
    let mut wrong = Vec::new();
    for (section, key, value) in &defaults {
        // A string default is written quoted in the reference; numbers and booleans bare.
        let with = config(dir.path(), Some((section, key, value)));
        if with != plain {
            wrong.push(format!("{section}.{key} = {value}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "documented defaults that are not the code's:\n{}",
        wrong.join("\n")
    );
}
