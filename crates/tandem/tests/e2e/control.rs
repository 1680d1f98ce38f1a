//! Operating a running tandem as an operator does: `tandem ctl` against the control
//! socket, reload by command and by SIGHUP, the metrics, compared with the traffic.

use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub(crate) fn backend<'a>(
    pools: &'a serde_json::Value,
    pool: &str,
    address: SocketAddr,
) -> &'a serde_json::Value {
    pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .unwrap()["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == address.to_string())
        .unwrap()
}

/// A tandem process started from a file in a temporary directory, with its control
/// socket (shared with `runtime`).
pub(crate) struct Node {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) tandem: Running,
    pub(crate) socket: std::path::PathBuf,
}

impl Node {
    fn config(&self, body: &str) -> String {
        format!(
            "[global]\nname = \"node-a\"\ncontrol_socket = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\n\n{body}",
            self.socket.display()
        )
    }

    pub(crate) fn write(&self, body: &str) {
        write_config(self.dir.path(), &self.config(body));
    }

    pub(crate) fn start(body: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tandem.sock");
        let path = dir.path().join("tandem.toml");
        let text = format!(
            "[global]\nname = \"node-a\"\ncontrol_socket = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\n\n{body}",
            socket.display()
        );
        std::fs::write(&path, text).unwrap();
        let mut tandem = Running::spawn(&["run", "--config", path.to_str().unwrap()]);
        tandem.wait_for("tandem running");
        Node {
            dir,
            tandem,
            socket,
        }
    }

    pub(crate) fn listen(&self, service: &str) -> SocketAddr {
        let status = ctl_json(&self.socket, &["status"]);
        let s = status["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .unwrap();
        s["listen"][0].as_str().unwrap().parse().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_shows_what_the_traffic_did_and_drains_a_backend() {
    raise_fd_limit();
    let a = name_server("a", true).await;
    let b = name_server("b", true).await;
    let node = Node::start(&format!(
        "[[pool]]\nname = \"p\"\nbackends = {}\n\n[[service]]\nname = \"svc\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\n",
        backends_toml(&[a, b], &[1, 1])
    ));
    let to = node.listen("svc");
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(to).await.unwrap();
        read_name(&mut s).await;
        held.push(s);
    }
    // Close all but one connection to b.
    let mut to_b = None;
    for (i, s) in held.into_iter().enumerate() {
        if i == 1 {
            to_b = Some(s);
        }
    }
    let mut to_b = to_b.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pools = ctl_json(&node.socket, &["pools"]);
    for (addr, name) in [(a, "a"), (b, "b")] {
        let bj = backend(&pools, "p", addr);
        assert_eq!(bj["total"], 5, "{name}: {bj}");
        assert_eq!(bj["bytes_to_client"], 10, "{name}: 5 x \"{name}\\n\": {bj}");
        assert_eq!(bj["health"], "unchecked");
    }
    assert_eq!(backend(&pools, "p", b)["active"], 1);
    let (code, table, _) = ctl(&node.socket, &["status"]);
    assert_eq!(code, 0);
    assert!(table.contains("node node-a"), "{table}");
    let svc_row = table
        .lines()
        .find(|l| l.starts_with("svc "))
        .unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = svc_row.split_whitespace().collect();
    assert_eq!(cols[4..6], ["1", "10"], "active 1, total 10: {svc_row}");

    // Drain b: no new connections, the established one goes on.
    let (code, out, err) = ctl(&node.socket, &["backend", "disable", "p", &b.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("p {b}: disabled"));
    for _ in 0..6 {
        assert_eq!(name_via(to, None).await, "a");
    }
    let mut buf = [0u8; 1];
    let still_open = tokio::time::timeout(Duration::from_millis(300), to_b.read(&mut buf)).await;
    assert!(
        still_open.is_err(),
        "the drained backend's connection was closed: {still_open:?}"
    );
    let (_, table, _) = ctl(&node.socket, &["pools"]);
    let row = table.lines().find(|l| l.contains(&b.to_string())).unwrap();
    assert!(row.contains("disabled"), "{row}");
    let (code, _, _) = ctl(&node.socket, &["backend", "enable", "p", &b.to_string()]);
    assert_eq!(code, 0);
    let names: std::collections::HashSet<String> = {
        let mut n = std::collections::HashSet::new();
        for _ in 0..4 {
            n.insert(name_via(to, None).await);
        }
        n
    };
    assert!(names.contains("b"), "b enabled again: {names:?}");
    let (code, _, err) = ctl(&node.socket, &["backend", "disable", "p", "10.9.9.9:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("pool p has no backend 10.9.9.9:1"), "{err}");
    let (code, _, err) = ctl(&node.socket, &["backend", "disable", "nope", "10.9.9.9:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("no pool is named \"nope\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_valid_changes_and_keeps_the_old_config_on_errors() {
    raise_fd_limit();
    let a = name_server("a", false).await;
    let b = name_server("b", false).await;
    let one = format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ address = \"{a}\" }}]\n\n[[service]]\nname = \"svc\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\n"
    );
    let mut node = Node::start(&one);
    let to = node.listen("svc");
    assert_eq!(tally(to, 3).await["a"], 3);
    // Valid: a second backend and a second service.
    let two = format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ address = \"{a}\" }}, {{ address = \"{b}\" }}]\n\n\
[[service]]\nname = \"svc\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\n\n\
[[service]]\nname = \"svc2\"\nlisten = [\"127.0.0.2:0\"]\npool = \"p\"\n"
    );
    node.write(&two);
    let (code, out, err) = ctl(&node.socket, &["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("services added: svc2"), "{out}");
    assert_eq!(node.listen("svc"), to, "the unchanged listener stayed open");
    let counts = tally(to, 4).await;
    assert_eq!((counts["a"], counts["b"]), (2, 2));
    let to2 = node.listen("svc2");
    assert!(name_via(to2, None).await.len() == 1);
    // Invalid: refused with its position; the running config stays.
    node.write(&two.replace(
        "pool = \"p\"\n\n[[service]]\nname = \"svc2\"",
        "pool = \"nope\"\n\n[[service]]\nname = \"svc2\"",
    ));
    let (code, _, err) = ctl(&node.socket, &["reload"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("reload refused, the running configuration stays"),
        "{err}"
    );
    assert!(
        err.contains("tandem.toml:13:8: service.pool: no pool is named \"nope\""),
        "{err}"
    );
    assert_eq!(tally(to, 2).await.values().sum::<usize>(), 2);
    assert_eq!(ctl_json(&node.socket, &["status"])["reloads"], 1);
    // SIGHUP: svc2 removed, its port closes, svc serves on.
    node.write(&one);
    node.tandem.signal(rustix::process::Signal::HUP);
    node.tandem.wait_for_nth("configuration reloaded", 2);
    assert!(
        TcpStream::connect(to2).await.is_err(),
        "svc2's listener still open"
    );
    assert_eq!(tally(to, 2).await["a"], 2);
    assert_eq!(ctl_json(&node.socket, &["status"])["reloads"], 2);
}

#[test]
fn ctl_without_a_running_tandem_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let (code, _, err) = ctl(&missing, &["status"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach tandem at") && err.contains("is tandem running?"),
        "{err}"
    );
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let (code, _, err) = ctl(&stale, &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("the socket file is stale"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_private_to_tandems_user() {
    use std::os::unix::fs::PermissionsExt;
    let a = name_server("a", false).await;
    let node = Node::start(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ address = \"{a}\" }}]\n\n[[service]]\nname = \"svc\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\n"
    ));
    let mode = std::fs::metadata(&node.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED part: trying the socket as another user needs root");
        return;
    }
    // Let nobody reach the folder, as a real /run would; the socket's mode still refuses.
    std::fs::set_permissions(node.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", TANDEM, "ctl", "--socket"])
        .arg(&node.socket)
        .arg("status")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Permission denied") && err.contains("run as the user tandem runs as"),
        "{err}"
    );
}

/// `name{labels} value` lines of an OpenMetrics exposition, checked for form.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "exposition ends with # EOF");
    let sample = regex::Regex::new(
        r#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? -?[0-9.e+-]+$"#,
    )
    .unwrap();
    let comment =
        regex::Regex::new(r"^# (HELP|TYPE|UNIT) [a-zA-Z_:][a-zA-Z0-9_:]* .+$|^# EOF$").unwrap();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(comment.is_match(line), "malformed comment line: {line}");
            continue;
        }
        assert!(sample.is_match(line), "malformed sample line: {line}");
        let (key, value) = line.rsplit_once(' ').unwrap();
        samples.insert(key.to_string(), value.parse().unwrap());
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_traffic_and_the_health() {
    raise_fd_limit();
    let a = name_server("a", false).await;
    let dead = dead_address().await;
    let mut node = Node::start(&format!(
        "[[pool]]\nname = \"p\"\nbackends = {}\nsticky = {{ key = \"source-ip\", ttl = \"1m\" }}\n\
check = {{ type = \"tcp\", interval = \"100ms\", timeout = \"50ms\", rise = 1, fall = 1, initial = \"up\" }}\n\n\
[[service]]\nname = \"svc\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\n",
        backends_toml(&[a, dead], &[1, 1])
    ));
    let admin: SocketAddr = {
        let line = node.tandem.wait_for("admin port ready");
        let at = line.find("admin=").unwrap() + 6;
        line[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let to = node.listen("svc");
    // Let the dead backend be found down, then make traffic.
    let deadline = Instant::now() + Duration::from_secs(3);
    while backend(&ctl_json(&node.socket, &["pools"]), "p", dead)["health"] != "down" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..7 {
        assert_eq!(name_via(to, None).await, "a");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = Command::new("curl")
        .args(["-s", "-i", &format!("http://{admin}/metrics")])
        .output()
        .unwrap();
    let response = String::from_utf8(out.stdout).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let m = parse_metrics(body);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in\n{body}"))
    };
    assert_eq!(
        get("tandem_service_connections_total{service=\"svc\"}"),
        7.0
    );
    assert_eq!(
        get("tandem_service_connections_active{service=\"svc\"}"),
        0.0
    );
    assert_eq!(
        get(&format!(
            "tandem_backend_connections_total{{pool=\"p\",backend=\"{a}\"}}"
        )),
        7.0
    );
    assert_eq!(
        get(&format!(
            "tandem_backend_bytes_total{{pool=\"p\",backend=\"{a}\",direction=\"to_client\"}}"
        )),
        14.0
    );
    assert_eq!(
        get(&format!("tandem_backend_up{{pool=\"p\",backend=\"{a}\"}}")),
        1.0
    );
    assert_eq!(
        get(&format!(
            "tandem_backend_up{{pool=\"p\",backend=\"{dead}\"}}"
        )),
        0.0
    );
    assert_eq!(get("tandem_pool_sticky_entries{pool=\"p\"}"), 1.0);
    assert!(
        get(&format!(
            "tandem_backend_check_latency_seconds{{pool=\"p\",backend=\"{a}\"}}"
        )) < 0.05
    );
    assert_eq!(
        get("tandem_build_info{version=\"0.1.0\",node=\"node-a\"}"),
        1.0
    );
    // The JSON snapshot and a 404 for anything else.
    let out = Command::new("curl")
        .args(["-s", &format!("http://{admin}/status.json")])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["node"], "node-a");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{admin}/nope"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    node.tandem.signal(rustix::process::Signal::TERM);
    assert_eq!(node.tandem.wait_exit(Duration::from_secs(5)), 0);
    assert!(!node.socket.exists(), "control socket removed at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_connection() {
    raise_fd_limit();
    let a = name_server("a", false).await;
    let b = name_server("b", false).await;
    let c = name_server("c", false).await;
    let config = |backends: &str, weight: u32| {
        format!(
            "[[pool]]\nname = \"p\"\nbackends = {backends}\n\n[[pool]]\nname = \"q\"\nbackends = [{{ address = \"{c}\", weight = {weight} }}]\n\n\
[[service]]\nname = \"svc\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\n"
        )
    };
    let d = start(&config(&backends_toml(&[a, b], &[1, 1]), 1)).await;
    let to = addr_of(&d, "svc");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four clients, each at most 2000 connections or until told to stop.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                for _ in 0..2000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    match TcpStream::connect(to).await {
                        Ok(mut s) => {
                            let mut buf = Vec::new();
                            match tokio::time::timeout(
                                Duration::from_secs(2),
                                s.read_to_end(&mut buf),
                            )
                            .await
                            {
                                Ok(Ok(_)) if buf.len() == 2 => ok += 1,
                                other => failed.push(format!("{other:?} {buf:?}")),
                            }
                        }
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    // Ten reloads while they run: backends come and go, the other pool changes.
    let sets = [vec![a, b], vec![a, b, c], vec![b, c], vec![a]];
    for n in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let set = &sets[n % sets.len()];
        let report = d
            .apply(support::config(&config(
                &backends_toml(set, &vec![1; set.len()]),
                n as u32 + 1,
            )))
            .await
            .unwrap();
        assert!(
            report.listeners_opened.is_empty() && report.listeners_closed.is_empty(),
            "{report:?}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    println!(
        "reload under load: {ok} connections served, {} failed, 10 reloads",
        failed.len()
    );
    assert!(ok > 500, "too little load to prove anything: {ok}");
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}
