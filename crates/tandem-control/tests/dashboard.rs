//! The Grafana dashboard (dist/grafana/tandem.json) and the Prometheus alerts
//! (dist/prometheus/tandem-alerts.yml) that tandem ships, held against the metrics it
//! exports: every query names only metrics that a scrape of a node with every part
//! switched on (services, pools with checks and sticky tables, VRRP, sync, redirect
//! with conntrackd) serves; every exported metric is drawn by some panel; and
//! Prometheus's own `promtool` parses every query and runs the alerts' unit tests
//! (tests/alerts.test.yml).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tandem_control::metrics::encode;
use tandem_control::protocol::*;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// Two responses: one under 5 ms, one slower than every bound.
fn response_times() -> ResponseTimesSnapshot {
    ResponseTimesSnapshot {
        bounds_secs: vec![0.005, 0.1],
        counts: vec![1, 0, 1],
        sum_secs: 12.0,
    }
}

/// A snapshot with every optional part present, so that `encode` writes every family.
fn full_snapshot() -> Snapshot {
    let check = CheckSnapshot {
        ok: true,
        latency_ms: 1.5,
        error: String::new(),
        age_secs: 1,
    };
    Snapshot {
        node: "a".into(),
        version: "0.1.0".into(),
        services: vec![ServiceSnapshot {
            name: "www".into(),
            mode: "http".into(),
            pool: "web".into(),
            proxy_refused: [("no_header".to_string(), 1)].into(),
            response_times: Some(response_times()),
            certificates: vec![tandem_control::CertificateSnapshot {
                name: "www.example.org".into(),
                source: "acme".into(),
                not_after: 1_800_000_000,
                seconds_left: 86_400,
            }],
            ..Default::default()
        }],
        pools: vec![PoolSnapshot {
            name: "web".into(),
            balance: "roundrobin".into(),
            sticky_entries: Some(3),
            backends: vec![BackendSnapshot {
                address: "10.0.0.1:80".into(),
                health: "up".into(),
                enabled: true,
                last_check: Some(check),
                certificate_days_left: Some(80),
                response_times: Some(response_times()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ha: HaInstances(vec![HaSnapshot {
            state: "master".into(),
            dropped: vec![("checksum".into(), 1)],
            ..Default::default()
        }]),
        sync: vec![PeerSnapshot {
            address: "10.9.0.2:7400".into(),
            ..Default::default()
        }],
        redirect: Some(RedirectSnapshot {
            forwards: vec![ForwardSnapshot {
                service: "smtp".into(),
                listen: "192.0.2.10:25".into(),
                backends: vec!["10.0.0.5:25".into()],
            }],
            conntrack: Some(ConntrackSnapshot {
                running: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
        announce: Some(AnnounceSnapshot {
            interface: "tdm-ann0".into(),
            addresses: vec![AnnouncedAddress {
                address: "192.0.2.10".into(),
                announced: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Metric families (`# TYPE` names) and sample names of one scrape.
fn exported() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = encode(&full_snapshot());
    let mut families = BTreeSet::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().unwrap().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    (families, samples)
}

/// The tandem metric names a PromQL expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tandem_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

fn dashboard() -> Value {
    let path = repo_file("dist/grafana/tandem.json");
    let text = std::fs::read_to_string(&path).expect("dist/grafana/tandem.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Every query of the dashboard: panel targets, annotations, variables.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            out.push((format!("panel {:?}", p["title"]), expr.to_string()));
        }
    }
    for a in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(expr) = a["expr"].as_str() {
            out.push((format!("annotation {:?}", a["name"]), expr.to_string()));
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push((format!("variable {:?}", v["name"]), q.to_string()));
        }
    }
    out
}

/// An expression as Prometheus would get it from Grafana: variables filled in.
fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
        .replace("$service", ".*")
        .replace("$pool", ".*")
}

#[test]
fn every_dashboard_query_reads_metrics_tandem_exports() {
    let (_, samples) = exported();
    let dashboard = dashboard();
    let queries = queries(&dashboard);
    assert!(queries.len() > 30, "only {} queries", queries.len());
    let mut unknown = Vec::new();
    for (place, expr) in &queries {
        for name in metric_names(expr) {
            if !samples.contains(&name) {
                unknown.push(format!("{place}: {name}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "queries name metrics tandem does not export:\n{}\nexported: {samples:?}",
        unknown.join("\n")
    );
}

#[test]
fn every_exported_metric_is_on_the_dashboard() {
    let (families, _) = exported();
    let read: BTreeSet<String> = queries(&dashboard())
        .iter()
        .flat_map(|(_, e)| metric_names(e))
        .collect();
    let missing: Vec<&String> = families
        .iter()
        .filter(|f| {
            // A counter is read as NAME_total, a histogram as NAME_bucket (or _sum, _count).
            !["", "_total", "_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| read.contains(&format!("{f}{suffix}")))
        })
        .collect();
    assert!(missing.is_empty(), "no panel draws {missing:?}");
}

#[test]
fn dashboard_layout_is_grafana_shaped() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "tandem-overview");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels(&dashboard) {
        let title = &p["title"];
        assert!(ids.insert(p["id"].as_u64().unwrap()), "{title}: id reused");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(
            w > 0 && h > 0 && x + w <= 24,
            "{title}: off the 24-column grid"
        );
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title}: overlaps another panel");
            }
        }
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                p["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{title}: no description"
            );
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            for var in ["$instance", "$service", "$pool"] {
                if expr.contains(var) {
                    assert!(
                        vars.contains(&&var[1..]),
                        "{title}: {var} is not a variable"
                    );
                }
            }
        }
    }
}

/// `promtool`, from Debian's prometheus package (scripts/test installs it).
fn promtool() -> Option<Command> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: promtool is not installed (scripts/test installs prometheus as root)");
    }
    found.then(|| Command::new("promtool"))
}

#[test]
fn prometheus_parses_every_dashboard_query() {
    let Some(mut promtool) = promtool() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries(&dashboard()).iter().enumerate() {
        if expr.starts_with("label_values(") {
            continue;
        }
        let quoted = serde_json::to_string(&expand(expr)).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {quoted}\n"
        ));
    }
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = promtool
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool refuses a dashboard query:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alerts_parse_fire_as_tested_and_read_exported_metrics() {
    let (_, samples) = exported();
    let alerts = std::fs::read_to_string(repo_file("dist/prometheus/tandem-alerts.yml")).unwrap();
    let tests =
        std::fs::read_to_string(repo_file("crates/tandem-control/tests/alerts.test.yml")).unwrap();
    for (what, text) in [("alert rules", &alerts), ("alert tests", &tests)] {
        for name in metric_names(text) {
            assert!(
                samples.contains(&name),
                "{what} name {name}, which tandem does not export"
            );
        }
    }
    let Some(mut promtool) = promtool() else {
        return;
    };
    let here = repo_file("crates/tandem-control/tests");
    let out = promtool
        .current_dir(&here)
        .args(["test", "rules", "alerts.test.yml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
