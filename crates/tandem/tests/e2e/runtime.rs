//! Runtime control with `tandem ctl` against a running tandem and real loopback
//! backends: weights, backends added and removed, sticky entries, open connections,
//! the event stream, and the agent check.

use crate::control::{Node, backend};
use crate::support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A fast tcp check, so that backends are decided within a second.
const CHECK: &str =
    "check = { type = \"tcp\", interval = \"200ms\", timeout = \"100ms\", rise = 1, fall = 1 }";

fn pool_service(backends: &str, extra: &str) -> String {
    format!(
        "[[pool]]\nname = \"p\"\nbackends = {backends}\n{extra}\n\n[[service]]\nname = \"svc\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\n"
    )
}

/// Waits until `backend` of pool p shows `health`.
async fn wait_health(node: &Node, address: SocketAddr, health: &str) {
    wait_until(
        &format!("{address} {health}"),
        Duration::from_secs(10),
        || backend(&ctl_json(&node.socket, &["pools"]), "p", address)["health"] == health,
    )
    .await;
}

/// Connects until the backend named `name` answers; returns that connection, open.
async fn connection_to(to: SocketAddr, name: &str) -> TcpStream {
    for _ in 0..20 {
        let mut s = TcpStream::connect(to).await.unwrap();
        if read_name(&mut s).await == name {
            return s;
        }
    }
    panic!("no connection reached {name} in 20 tries");
}

/// Whether tandem keeps `s` open: nothing arrives (no EOF) within 300 ms.
async fn still_open(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf))
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_add_and_remove_change_the_share_until_the_next_reload() {
    raise_fd_limit();
    let a = name_server("a", true).await;
    let b = name_server("b", true).await;
    let c = name_server("c", true).await;
    let body = pool_service(&backends_toml(&[a, b], &[1, 1]), CHECK);
    let node = Node::start(&body);
    let to = node.listen("svc");
    wait_health(&node, a, "up").await;
    wait_health(&node, b, "up").await;
    let even = tally(to, 20).await;
    assert_eq!((even["a"], even["b"]), (10, 10), "{even:?}");

    // Weight: b 3, a 1 gives b three connections of four.
    let (code, out, err) = ctl(
        &node.socket,
        &["backend", "weight", "p", &b.to_string(), "3"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("p {b}: weight 1 -> 3")), "{out}");
    assert!(out.contains("until the next reload"), "{out}");
    let weighted = tally(to, 40).await;
    println!("after weight 3: {weighted:?}");
    assert_eq!((weighted["a"], weighted["b"]), (10, 30), "{weighted:?}");
    let j = ctl_json(
        &node.socket,
        &["backend", "weight", "p", &a.to_string(), "3"],
    );
    assert_eq!(j["change"], "weight 1 -> 3");
    assert_eq!(j["backend"]["weight"], 3);

    // Add c: health-checked like the others, then chosen.
    let (code, out, err) = ctl(
        &node.socket,
        &["backend", "add", "p", &c.to_string(), "--weight", "3"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("p {c}: added")), "{out}");
    assert!(out.contains("until the next reload"), "{out}");
    wait_health(&node, c, "up").await;
    let three = tally(to, 30).await;
    println!("with c added: {three:?}");
    assert_eq!(
        (three["a"], three["b"], three["c"]),
        (10, 10, 10),
        "{three:?}"
    );
    let (code, _, err) = ctl(&node.socket, &["backend", "add", "p", &c.to_string()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("pool p has a backend {c} already")),
        "{err}"
    );

    // Remove c while a client holds a connection to it: no new connections go there,
    // the established one goes on until its client ends it.
    let mut held = connection_to(to, "c").await;
    let j = ctl_json(&node.socket, &["backend", "remove", "p", &c.to_string()]);
    assert_eq!(j["change"], "removed");
    assert_eq!(j["draining"], 1, "{j}");
    assert!(
        j["lasts"]
            .as_str()
            .unwrap()
            .contains("until the next reload")
    );
    let without = tally(to, 30).await;
    println!("after removing c: {without:?}");
    assert!(!without.contains_key("c"), "{without:?}");
    assert!(
        still_open(&mut held).await,
        "the removed backend's connection was cut"
    );
    held.write_all(b"still here").await.unwrap();
    let listed = ctl_json(&node.socket, &["connections"]);
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["backend"] == c.to_string())
        .unwrap_or_else(|| panic!("the held connection is listed: {listed}"));
    wait_until("bytes counted", Duration::from_secs(2), || {
        ctl_json(&node.socket, &["connections"])
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == row["id"] && r["bytes_to_backend"] == 10)
    })
    .await;
    drop(held);
    let (code, _, err) = ctl(&node.socket, &["backend", "remove", "p", &c.to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("pool p has no backend {c}")), "{err}");

    // A reload builds the pools from the file again: weights 1 and 1, no c.
    let (code, _, err) = ctl(&node.socket, &["reload"]);
    assert_eq!(code, 0, "{err}");
    let back = tally(to, 20).await;
    assert_eq!((back["a"], back["b"]), (10, 10), "{back:?}");
    let (code, _, err) = ctl(&node.socket, &["backend", "remove", "p", &b.to_string()]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl(&node.socket, &["backend", "remove", "p", &a.to_string()]);
    assert_eq!(code, 1, "the last backend stays");
    assert!(err.contains("disable it instead"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_entries_are_shown_and_a_cleared_client_moves() {
    raise_fd_limit();
    let a = name_server("a", false).await;
    let b = name_server("b", false).await;
    let node = Node::start(&pool_service(
        &backends_toml(&[a, b], &[1, 1]),
        "sticky = { key = \"source-ip\" }",
    ));
    let to = node.listen("svc");
    let client: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let first = name_via(to, Some(client)).await;
    assert_eq!(name_via(to, Some(client)).await, first, "pinned");
    let pinned_to = if first == "a" { a } else { b };
    let other = if first == "a" { "b" } else { "a" };
    let entries = ctl_json(&node.socket, &["sticky", "show", "--client", "127.0.0.2"]);
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["backend"], pinned_to.to_string());
    assert_eq!(entries[0]["pool"], "p");
    let (code, table, _) = ctl(&node.socket, &["sticky", "show"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("127.0.0.2") && table.contains("1 entries"),
        "{table}"
    );

    // Cleared: the next pick is round-robin's next backend, the other one.
    let (code, out, err) = ctl(&node.socket, &["sticky", "clear", "--client", "127.0.0.2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1 sticky entries cleared");
    assert_eq!(
        name_via(to, Some(client)).await,
        other,
        "the cleared client moved"
    );

    // By backend: only the entries pinned to it go.
    for n in 3..=6 {
        name_via(to, Some(format!("127.0.0.{n}").parse().unwrap())).await;
    }
    let all = ctl_json(&node.socket, &["sticky", "show"]);
    let on_a = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["backend"] == a.to_string())
        .count();
    assert!(on_a > 0 && on_a < 5, "{all}");
    let j = ctl_json(
        &node.socket,
        &["sticky", "clear", "--backend", &a.to_string()],
    );
    assert_eq!(j["cleared"], on_a as u64);
    assert_eq!(j["synced"], false, "no sync configured");
    let left = ctl_json(&node.socket, &["sticky", "show", "--pool", "p"]);
    assert!(
        left.as_array()
            .unwrap()
            .iter()
            .all(|e| e["backend"] == b.to_string()),
        "{left}"
    );
    let j = ctl_json(&node.socket, &["sticky", "clear"]);
    assert_eq!(j["cleared"], (5 - on_a) as u64);
    let (_, table, _) = ctl(&node.socket, &["sticky", "show"]);
    assert_eq!(table, "no sticky entries\n");
    let (code, _, err) = ctl(&node.socket, &["sticky", "clear", "--client", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("\"nope\" is not an IP address"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_is_listed_with_its_bytes_and_closed_by_id() {
    raise_fd_limit();
    let a = name_server("a", true).await;
    let node = Node::start(&pool_service(&backends_toml(&[a], &[1]), ""));
    let to = node.listen("svc");
    let mut s = TcpStream::connect(to).await.unwrap();
    assert_eq!(read_name(&mut s).await, "a");
    s.write_all(&[7u8; 100]).await.unwrap();
    let me = s.local_addr().unwrap().to_string();
    wait_until("100 bytes counted", Duration::from_secs(2), || {
        ctl_json(&node.socket, &["connections", "--service", "svc"])
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["bytes_to_backend"] == 100)
    })
    .await;
    let list = ctl_json(&node.socket, &["connections"]);
    let c = &list.as_array().unwrap()[0];
    assert_eq!(c["client"], me);
    assert_eq!(c["service"], "svc");
    assert_eq!(c["backend"], a.to_string());
    assert_eq!(c["bytes_to_client"], 2, "\"a\\n\"");
    let (_, table, _) = ctl(&node.socket, &["connections"]);
    println!("{table}");
    assert!(table.contains(&me) && table.contains("100 B"), "{table}");
    assert_eq!(
        ctl_json(&node.socket, &["connections", "--service", "other"]),
        serde_json::json!([])
    );
    let id = c["id"].as_u64().unwrap().to_string();
    let (code, out, err) = ctl(&node.socket, &["connections", "close", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("connection {id} closed")), "{out}");
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("the client sees its connection end");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    wait_until("the list is empty", Duration::from_secs(2), || {
        ctl_json(&node.socket, &["connections"]) == serde_json::json!([])
    })
    .await;
    let (code, _, err) = ctl(&node.socket, &["connections", "close", &id]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("no open connection has id {id}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_streams_a_health_transition_and_a_reload() {
    raise_fd_limit();
    let a = name_server("a", false).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let killed = l.local_addr().unwrap();
    let server = backends::serve_on(l, |_, _| async {});
    let node = Node::start(&pool_service(&backends_toml(&[a, killed], &[1, 1]), CHECK));
    wait_health(&node, killed, "up").await;
    // The event log compares the state each second: let it see "up" first.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let socket = node.socket.to_str().unwrap().to_string();
    let mut lines = Running::spawn(&["ctl", "--socket", &socket, "monitor"]);
    let mut json = Running::spawn(&["ctl", "--socket", &socket, "--json", "monitor"]);
    // Both follow once an operator's action made after they started shows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctl(
        &node.socket,
        &["backend", "weight", "p", &a.to_string(), "2"],
    );
    lines.wait_for(&format!("operator p/{a}: weight 1 -> 2"));
    json.wait_for("\"kind\":\"operator\"");
    // A drain changes no pool set: the event log sees it by the backends' state epoch.
    let (code, _, err) = ctl(&node.socket, &["backend", "disable", "p", &a.to_string()]);
    assert_eq!(code, 0, "{err}");
    lines.wait_for(&format!("operator p/{a}: disabled (draining)"));
    let (code, _, err) = ctl(&node.socket, &["backend", "enable", "p", &a.to_string()]);
    assert_eq!(code, 0, "{err}");
    lines.wait_for(&format!("operator p/{a}: enabled"));
    let killed_at = Instant::now();
    server.abort();
    let line = lines.wait_for("-> down: connect");
    println!("{line} ({:?} after the kill)", killed_at.elapsed());
    assert!(
        line.contains(&format!(
            "health p/{killed}: up -> down: connect: Connection refused"
        )),
        "{line}"
    );
    let event: serde_json::Value =
        serde_json::from_str(&json.wait_for("-> down: connect")).unwrap();
    assert_eq!(event["kind"], "health");
    assert_eq!(event["subject"], format!("p/{killed}"));
    let (code, _, err) = ctl(&node.socket, &["reload"]);
    assert_eq!(code, 0, "{err}");
    let line = lines.wait_for(" reload ");
    assert!(line.contains("reloaded"), "{line}");
    let event: serde_json::Value =
        serde_json::from_str(&json.wait_for("\"kind\":\"reload\"")).unwrap();
    assert_eq!(event["text"], "reloaded");
}

/// An agent on `ip`:`port` that answers what `says` holds, then closes.
async fn agent(ip: &str, port: u16, says: Arc<Mutex<String>>) {
    let l = TcpListener::bind((ip, port)).await.unwrap();
    backends::serve_on(l, move |mut s, _| {
        let answer = says.lock().unwrap().clone();
        async move {
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
}

/// A name server on `ip` (any port).
async fn name_server_on(ip: &str, name: &'static str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let a = l.local_addr().unwrap();
    backends::serve_on(l, move |mut s, _| async move {
        let _ = s.write_all(format!("{name}\n").as_bytes()).await;
    });
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_drains_restores_and_halves_its_backend() {
    raise_fd_limit();
    // Two backends on their own loopback addresses, each with its agent on one port.
    let a = name_server_on("127.0.0.21", "a").await;
    let b = name_server_on("127.0.0.22", "b").await;
    let port = backends::free_port();
    let a_says = Arc::new(Mutex::new("up\n".to_string()));
    let b_says = Arc::new(Mutex::new("drain\n".to_string()));
    agent("127.0.0.21", port, a_says.clone()).await;
    agent("127.0.0.22", port, b_says.clone()).await;
    let node = Node::start(&pool_service(
        &backends_toml(&[a, b], &[2, 2]),
        &format!("agent = {{ port = {port}, interval = \"200ms\", timeout = \"100ms\" }}"),
    ));
    let to = node.listen("svc");
    let agent_of = |j: &serde_json::Value, addr| backend(j, "p", addr)["agent"].clone();
    wait_until("b's agent says drain", Duration::from_secs(5), || {
        agent_of(&ctl_json(&node.socket, &["pools"]), b)
            .as_str()
            .is_some_and(|s| s.starts_with("drain"))
    })
    .await;
    let pools = ctl_json(&node.socket, &["pools"]);
    assert_eq!(
        backend(&pools, "p", b)["health"],
        "unchecked",
        "drain is not down"
    );
    let drained = tally(to, 10).await;
    assert_eq!(drained.get("b"), None, "{drained:?}");

    *b_says.lock().unwrap() = "up\n".into();
    wait_until("b's agent says up", Duration::from_secs(5), || {
        agent_of(&ctl_json(&node.socket, &["pools"]), b)
            .as_str()
            .is_some_and(|s| s.starts_with("ready"))
    })
    .await;
    let even = tally(to, 20).await;
    assert_eq!((even["a"], even["b"]), (10, 10), "{even:?}");

    *b_says.lock().unwrap() = "50%\n".into();
    wait_until("b at half weight", Duration::from_secs(5), || {
        backend(&ctl_json(&node.socket, &["pools"]), "p", b)["weight"] == 1
    })
    .await;
    let halved = tally(to, 30).await;
    println!("b at 50%: {halved:?}");
    assert_eq!((halved["a"], halved["b"]), (20, 10), "{halved:?}");
    let (_, table, _) = ctl(&node.socket, &["pools"]);
    assert!(
        table.contains(&format!("pool p {b}: agent ready 50%: said 50%")),
        "{table}"
    );

    // "maint" and "down" take it out as well; an agent that stops answering leaves
    // the last answer in force.
    *b_says.lock().unwrap() = "maint # upgrading\n".into();
    wait_until("b in maintenance", Duration::from_secs(5), || {
        agent_of(&ctl_json(&node.socket, &["pools"]), b)
            .as_str()
            .is_some_and(|s| s.starts_with("maint"))
    })
    .await;
    let maint = tally(to, 6).await;
    assert_eq!(maint.get("b"), None, "{maint:?}");
    *a_says.lock().unwrap() = "down\n".into();
    wait_until("a down by its agent", Duration::from_secs(5), || {
        agent_of(&ctl_json(&node.socket, &["pools"]), a)
            .as_str()
            .is_some_and(|s| s.starts_with("down"))
    })
    .await;
    // Nothing usable: new clients are refused.
    let mut s = TcpStream::connect(to).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_sticky_entries_reaches_the_sync_peer() {
    use crate::sync::{Pair, client_ip, table};
    raise_fd_limit();
    let (x, y) = (name_server("x", false).await, name_server("y", false).await);
    let Pair { a, b, _dir, .. } = Pair::start(&backends_toml(&[x, y], &[1, 1])).await;
    let to = addr_of(&a, "www");
    for n in 0..20 {
        name_via(to, Some(client_ip(n))).await;
    }
    let tb = table(&b);
    wait_until("B has the 20 pins", Duration::from_secs(5), || {
        tb.len() == 20
    })
    .await;
    let one = tandem_control::StickyFilter {
        client: Some(client_ip(3).to_string()),
        ..Default::default()
    };
    let r = a.clear_sticky(&one).unwrap();
    assert_eq!((r.cleared, r.synced), (1, true));
    let took = wait_until("B forgot the client", Duration::from_secs(5), || {
        tb.len() == 19 && tb.get(&client_ip(3), tandem_balance::now_ms()).is_none()
    })
    .await;
    println!("the peer forgot the cleared client {took:?} after the clear");
    let on_x = tandem_control::StickyFilter {
        backend: Some(x.to_string()),
        ..Default::default()
    };
    let r = a.clear_sticky(&on_x).unwrap();
    assert!(r.cleared > 0);
    wait_until("B forgot the clients of x", Duration::from_secs(5), || {
        tb.entries().iter().all(|(_, e)| e.backend == y) && tb.len() == 19 - r.cleared as usize
    })
    .await;
    a.clear_sticky(&Default::default()).unwrap();
    wait_until("B's table is empty", Duration::from_secs(5), || {
        tb.is_empty()
    })
    .await;
    assert!(table(&a).is_empty());
}
